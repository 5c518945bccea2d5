"""Redis support (the ``redis`` extra): :class:`RedisLayer`, its generated sync twin
:class:`SyncRedisLayer`, and the distributed coordination components (imported lazily from
their modules).

Importing this package without redis-py installed raises ``ImportError`` naming
``pip install 'layercache-py[redis]'``.
"""

from ._sync_layer import SyncRedisLayer
from .layer import RedisLayer

__all__ = ["RedisLayer", "SyncRedisLayer"]
