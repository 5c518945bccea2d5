"""The thread-only SyncCacheStack tests reuse the async suite's plain helpers
(``RecordingLayer``) and their own (``sync_stack_support``), imported as plain modules."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "stack"))
sys.path.insert(0, str(Path(__file__).parent))
