"""Serializers: how values become bytes in remote layers (Redis, disk, Memcached).

* :class:`JsonSerializer` (default): standard library only; JSON plus datetime, date, time,
  UUID, Decimal, bytes and dataclasses.
* :class:`MsgpackSerializer`: the ``msgpack`` extra; the same types, smaller and faster.
* :class:`PickleSerializer`: opt-in, any picklable value, every payload HMAC-signed and verified
  before it is unpickled.

Any object with ``format_id``, ``dumps`` and ``loads`` (the :class:`Serializer` protocol) works.
"""

from ._base import Serializer
from ._json import JsonSerializer
from ._msgpack import MsgpackSerializer
from ._pickle import PickleSerializer

__all__ = ["JsonSerializer", "MsgpackSerializer", "PickleSerializer", "Serializer"]
