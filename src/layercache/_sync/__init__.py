# DO NOT EDIT: generated from src/layercache/_async/__init__.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""The stack orchestration: hand-written in ``_async``, generated into ``_sync`` by
``scripts/unasync.py``."""
