"""Redis support (the ``redis`` extra): :class:`RedisLayer`, :class:`RedisInvalidationBus`,
:class:`RedisSingleFlightCoordinator` and :class:`RedisTagIndex` on redis-py's asyncio client,
and their sync twins (generated from them by ``scripts/unasync.py``), which the same classes
return when given a sync client.

Importing this package without redis-py installed raises ``ImportError`` naming
``pip install 'layercache-py[redis]'``.
"""

from ._lease import CasToken
from ._sync_bus import SyncRedisInvalidationBus
from ._sync_layer import SyncRedisLayer
from ._sync_single_flight import SyncRedisSingleFlightCoordinator
from ._sync_tag_index import SyncRedisTagIndex
from .bus import RedisInvalidationBus
from .layer import RedisLayer
from .single_flight import RedisSingleFlightCoordinator
from .tag_index import RedisTagIndex

__all__ = [
    "CasToken",
    "RedisInvalidationBus",
    "RedisLayer",
    "RedisSingleFlightCoordinator",
    "RedisTagIndex",
    "SyncRedisInvalidationBus",
    "SyncRedisLayer",
    "SyncRedisSingleFlightCoordinator",
    "SyncRedisTagIndex",
]
