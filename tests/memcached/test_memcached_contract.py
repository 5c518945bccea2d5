"""The layer contract suite on both twins of the memcached layer, against a real memcached."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pymemcache.client.base import PooledClient

from _memcached_server import MemcachedServer
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer
from layercache.testing import LayerContractTests

# memcached's item limit is 1 MiB (-I): the several-MiB check of the suite cannot fit, so it
# runs just under the limit (a larger value is refused: test_memcached_values.py).
LARGE = 900 * 1024


class TestMemcachedLayerContract(LayerContractTests):
    """The asyncio layer (aiomcache), built from ``servers=``."""

    large_value_size: ClassVar[int] = LARGE

    @pytest.fixture(autouse=True)
    def _server(self, memcached: MemcachedServer, prefix: str) -> None:
        self.server = memcached
        self.prefix = prefix

    def make_layer(self) -> Any:
        return MemcachedLayer(servers=self.server.address, prefix=self.prefix, ttl=60)


class TestSyncMemcachedLayerContract(LayerContractTests):
    """The generated sync twin (pymemcache), built from ``servers=``."""

    large_value_size: ClassVar[int] = LARGE

    @pytest.fixture(autouse=True)
    def _server(self, memcached: MemcachedServer, prefix: str) -> None:
        self.server = memcached
        self.prefix = prefix

    def make_layer(self) -> Any:
        layer = SyncMemcachedLayer(servers=self.server.address, prefix=self.prefix, ttl=60)
        assert not hasattr(layer, "aclose")
        return layer


class TestSyncTwinOnGivenClientContract(LayerContractTests):
    """``MemcachedLayer(client=<pymemcache client>)`` is the sync twin, on the given client."""

    large_value_size: ClassVar[int] = LARGE

    @pytest.fixture(autouse=True)
    def _server(self, memcached: MemcachedServer, prefix: str) -> Any:
        self.client = PooledClient((memcached.host, memcached.port), max_pool_size=8)
        self.prefix = prefix
        yield
        self.client.close()

    def make_layer(self) -> Any:
        layer = MemcachedLayer(client=self.client, prefix=self.prefix, ttl=60)
        assert isinstance(layer, SyncMemcachedLayer)
        return layer


def test_contract_suite_covers_optional_methods() -> None:
    """The methods the suite checks beyond the required ones exist on both twins (a check of
    a missing optional method would be skipped, not failed)."""
    for cls in (MemcachedLayer, SyncMemcachedLayer):
        for method in ("get_many", "set_many", "delete_many", "has", "ttl", "ping"):
            assert callable(getattr(cls, method, None)), (cls, method)
    assert MemcachedLayer.is_blocking is False
    assert SyncMemcachedLayer.is_blocking is True
    assert MemcachedLayer.is_local is False
    assert SyncMemcachedLayer.is_local is False
