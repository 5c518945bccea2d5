"""Redis support (the ``redis`` extra): :class:`RedisLayer` and the distributed
coordination components (imported lazily from their modules).

Importing this package without redis-py installed raises ``ImportError`` naming
``pip install 'layercache-py[redis]'``.
"""

from .layer import RedisLayer

__all__ = ["RedisLayer"]
