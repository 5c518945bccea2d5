"""The twin primitives: the whole difference between the asyncio and the thread stacks.

``aio.py`` (asyncio) and ``threads.py`` (threads) are hand-written and define the same names:
locks, signals, futures, waiters, background work, timeouts. Everything under ``_async/`` (and
the Redis coordination sources) imports ``.._primitives.aio``; ``scripts/unasync.py`` rewrites
that import to ``.._primitives.threads`` in the generated twins, so the logic exists once. The
package itself imports nothing: a twin loads only its own primitives.
"""
