"""The Redis backends the tag-index tests run on (a single server or a three-master
cluster) and the clients a test opened there. The ``backend`` fixture is in conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from layercache.redis.tag_index import RedisTagIndex

# The tag-index prefix the tag-index tests use unless they name their own.
TAG_INDEX_PREFIX = "t:idx"


@dataclass
class Backend:
    """A real Redis (single server or three-master cluster) and the clients a test opened."""

    kind: str
    make: Callable[[], Any]
    clients: list[Any] = field(default_factory=list)

    def client(self) -> Any:
        created = self.make()
        self.clients.append(created)
        return created

    def index(self, client: Any = None, **kwargs: Any) -> RedisTagIndex:
        kwargs.setdefault("prefix", TAG_INDEX_PREFIX)
        return RedisTagIndex(client if client is not None else self.client(), **kwargs)
