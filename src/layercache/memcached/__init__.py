"""memcached support (the ``memcached`` extra): :class:`MemcachedLayer` on aiomcache (asyncio)
and its sync twin :class:`SyncMemcachedLayer` on pymemcache (generated from it by
``scripts/unasync.py``), which ``MemcachedLayer`` returns when given a pymemcache client.

Importing this package without aiomcache and pymemcache installed raises ``ImportError``
naming ``pip install 'layercache-py[memcached]'``.
"""

from ._common import MemcachedValueTooLargeError
from ._sync_layer import SyncMemcachedLayer
from .layer import MemcachedLayer

__all__ = ["MemcachedLayer", "MemcachedValueTooLargeError", "SyncMemcachedLayer"]
