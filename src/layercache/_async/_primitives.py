"""Transition shim (issue 12): the primitives live in ``layercache/_primitives/``.

Only ``stack.py`` still imports this module while it is split; every other module imports
``.._primitives.aio`` directly. The generated twin re-exports ``.._primitives.threads``.
"""

from .._primitives.aio import *  # noqa: F403
from .._primitives.aio import __all__ as __all__
