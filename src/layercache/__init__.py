"""layercache: a multi-layer cache (memory → Redis → disk) behind one ``get(key, fetcher)``.

``import layercache`` loads only the standard library; names that need an extra
(``RedisLayer`` needs ``layercache-py[redis]``, ...) are resolved lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._async.stack import CacheNamespace, CacheStack
from ._entry import Entry
from ._exceptions import (
    CacheLayerError,
    CacheMissError,
    CircuitOpenError,
    FetcherQueueFullError,
    FetchTimeoutError,
    LayerCacheError,
    UnserializableValueError,
)
from ._keys import MAX_KEY_LENGTH, key_part, validate_key, validate_prefix
from ._metrics import (
    LATENCY_BUCKETS,
    BusStatus,
    CacheInspectResult,
    CacheMetrics,
    CacheStats,
    DegradationEvent,
    HitRate,
    LatencySummary,
    LayerHealth,
    LayerMetrics,
    LayerStatus,
    OperationLatency,
    SingleFlightStatus,
)
from ._options import (
    AdaptiveTtl,
    CacheEntry,
    CacheEntryRequest,
    CacheOptions,
    CircuitBreaker,
    RateLimit,
)
from ._sync.stack import SyncCacheNamespace, SyncCacheStack
from ._tag_index import InMemoryTagIndex
from ._telemetry import key_hash
from ._types import CacheLayer, InvalidationMessage, OperationTracer
from ._warming import WarmEntry, WarmSummary
from .layers.memory import MemoryLayer

if TYPE_CHECKING:
    from .layers.disk import DiskLayer
    from .memcached._sync_layer import SyncMemcachedLayer
    from .memcached.layer import MemcachedLayer
    from .redis._sync_bus import SyncRedisInvalidationBus
    from .redis._sync_layer import SyncRedisLayer
    from .redis._sync_single_flight import SyncRedisSingleFlightCoordinator
    from .redis._sync_tag_index import SyncRedisTagIndex
    from .redis.bus import RedisInvalidationBus
    from .redis.layer import RedisLayer
    from .redis.single_flight import RedisSingleFlightCoordinator
    from .redis.tag_index import RedisTagIndex
    from .serializers import JsonSerializer, MsgpackSerializer, PickleSerializer

__all__ = [
    "AdaptiveTtl",
    "BusStatus",
    "CacheEntry",
    "CacheEntryRequest",
    "CacheInspectResult",
    "CacheLayer",
    "CacheLayerError",
    "CacheMetrics",
    "CacheMissError",
    "CacheNamespace",
    "CacheOptions",
    "CacheStack",
    "CacheStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "DegradationEvent",
    "DiskLayer",
    "Entry",
    "FetchTimeoutError",
    "FetcherQueueFullError",
    "HitRate",
    "InMemoryTagIndex",
    "InvalidationMessage",
    "JsonSerializer",
    "LATENCY_BUCKETS",
    "LatencySummary",
    "LayerCacheError",
    "LayerHealth",
    "LayerMetrics",
    "LayerStatus",
    "MAX_KEY_LENGTH",
    "MemcachedLayer",
    "MemoryLayer",
    "MsgpackSerializer",
    "OperationLatency",
    "OperationTracer",
    "PickleSerializer",
    "RateLimit",
    "RedisInvalidationBus",
    "RedisLayer",
    "RedisSingleFlightCoordinator",
    "RedisTagIndex",
    "SingleFlightStatus",
    "SyncCacheNamespace",
    "SyncCacheStack",
    "SyncMemcachedLayer",
    "SyncRedisInvalidationBus",
    "SyncRedisLayer",
    "SyncRedisSingleFlightCoordinator",
    "SyncRedisTagIndex",
    "UnserializableValueError",
    "WarmEntry",
    "WarmSummary",
    "key_hash",
    "key_part",
    "validate_key",
    "validate_prefix",
]

__version__ = "0.1.0"

_LAZY = {
    "DiskLayer": "layercache.layers.disk",
    "MemcachedLayer": "layercache.memcached.layer",
    "SyncMemcachedLayer": "layercache.memcached._sync_layer",
    "RedisLayer": "layercache.redis.layer",
    "SyncRedisLayer": "layercache.redis._sync_layer",
    "SyncRedisInvalidationBus": "layercache.redis._sync_bus",
    "SyncRedisSingleFlightCoordinator": "layercache.redis._sync_single_flight",
    "SyncRedisTagIndex": "layercache.redis._sync_tag_index",
    "RedisSingleFlightCoordinator": "layercache.redis.single_flight",
    "RedisInvalidationBus": "layercache.redis.bus",
    "RedisTagIndex": "layercache.redis.tag_index",
    "JsonSerializer": "layercache.serializers",
    "MsgpackSerializer": "layercache.serializers",
    "PickleSerializer": "layercache.serializers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layercache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
