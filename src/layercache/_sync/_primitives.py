# DO NOT EDIT: generated from src/layercache/_async/_primitives.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""Transition shim (issue 12): the primitives live in ``layercache/_primitives/``.

Only ``stack.py`` still imports this module while it is split; every other module imports
``.._primitives.aio`` directly. The generated twin re-exports ``.._primitives.threads``.
"""

from .._primitives.threads import *  # noqa: F403
from .._primitives.threads import __all__ as __all__
