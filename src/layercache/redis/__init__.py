"""Redis support (the ``redis`` extra): :class:`RedisLayer`.

Importing this package without redis-py installed raises ``ImportError`` naming
``pip install 'layercache-py[redis]'``.
"""

from .layer import RedisLayer

__all__ = ["RedisLayer"]
