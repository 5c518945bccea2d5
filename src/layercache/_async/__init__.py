"""The stack orchestration: hand-written in ``_async``, generated into ``_sync`` by
``scripts/unasync.py``."""
