"""The snapshotter: ``export_state()`` reads every key of the stack's layers, and
``import_state()``'s entries are planned here (validated, all before any write).

Export lists the keys of every layer that can list them (``keys``), reads them in bulk and
keeps, for each key, the fresh entry of the first such layer holding it: its value, remaining
windows and tags. Keys of the current generation are exported in their user form, others'
not at all. Import validates the whole snapshot first (:mod:`layercache.snapshots`) and
returns the ``set_many`` entries that store it; the stack then writes them through its usual
path (every layer, the tag index, the bus). Calls go down only: the layer set, the adapters,
the writer's write-behind queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .._entry import Entry
from .._exceptions import CacheLayerError
from .._glob import escape_glob
from .._options import CacheEntry
from ..snapshots import MAX_BYTES, MAX_ENTRIES, SnapshotEntry, make_snapshot, snapshot_entries
from .layer_set import LayerSet
from .writer import Writer

__all__ = ["Snapshotter"]

# Keys read per bulk call of a layer during an export.
_EXPORT_BATCH = 500


class Snapshotter:
    """Export and import planning for one stack."""

    def __init__(self, *, layers: LayerSet, writer: Writer, clock: Callable[[], float]) -> None:
        self._layers = layers
        self._writer = writer
        self._clock = clock

    async def _entries_of(self, adapter: Any, keys: list[str]) -> list[Entry | None]:
        """The entries ``adapter`` holds for ``keys`` (a queued write-behind operation
        answering first, as for ``get``)."""
        raws = await adapter.get_many(keys)
        entries = [
            self._layers.entry_or_miss(adapter, k, r) for k, r in zip(keys, raws, strict=True)
        ]
        writer = self._writer
        if writer.behind is not None and not adapter.is_local:
            for index, key in enumerate(keys):
                queued, entry = writer.queued(adapter, key)
                if queued:
                    entries[index] = entry
        return entries

    async def export(
        self, generation: int | None, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
    ) -> dict[str, Any]:
        """A snapshot of every fresh key (see the module docstring).

        Raises:
            ValueError: No layer can list its keys, a value the JsonSerializer cannot encode,
                or more than ``max_entries`` entries / ``max_bytes`` bytes.
            CacheLayerError: A layer failed (or is degraded): an export never silently
                leaves keys out.
        """
        listable = [a for a in self._layers.adapters if a.can_list_keys]
        if not listable:
            raise ValueError(
                "no layer of this stack can list its keys (keys()): nothing to export from"
            )
        prefix = "" if generation is None else f"v{generation}:"
        pattern = escape_glob(prefix) + "*" if prefix else None
        chosen: dict[str, Entry] = {}
        now = self._clock()
        for adapter in listable:
            if adapter.degraded_until is not None and not await self._layers.usable(adapter):
                raise CacheLayerError(adapter.name, "keys")
            listed = await adapter.keys(pattern)
            todo = [k for k in listed if k not in chosen and k.startswith(prefix)]
            for start in range(0, len(todo), _EXPORT_BATCH):
                batch = todo[start : start + _EXPORT_BATCH]
                for key, entry in zip(batch, await self._entries_of(adapter, batch), strict=True):
                    if entry is not None and entry.is_fresh(now):
                        chosen[key] = entry
            if len(chosen) > max_entries:
                raise ValueError(
                    f"the stack holds more than {max_entries} keys: over the snapshot bound"
                )

        def remaining(until: float | None) -> float | None:
            return None if until is None else until - now

        snapshot = make_snapshot(
            (
                SnapshotEntry(
                    key[len(prefix) :],
                    entry.value,
                    remaining(entry.fresh_until),
                    remaining(entry.stale_until),
                    remaining(entry.error_until),
                    tuple(entry.tags),
                )
                for key, entry in sorted(chosen.items())
            ),
            created_at=now,
        )
        size = len(json.dumps(snapshot, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise ValueError(
                f"the snapshot would be {size} bytes as JSON, more than the bound of {max_bytes}"
            )
        return snapshot

    def plan_import(
        self,
        snapshot: Mapping[str, Any],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> list[CacheEntry]:
        """The ``set_many`` entries storing ``snapshot``, after validating all of it.

        Entries whose ``ttl`` is 0 or less (expired) are left out. A ``ttl`` of ``None`` is
        stored with each layer's default TTL (as ``set`` without ``ttl``); the windows are
        rebuilt from the remaining seconds.

        Raises:
            ValueError: Anything wrong in the snapshot (nothing is imported then).
        """
        items: list[CacheEntry] = []
        for entry in snapshot_entries(snapshot, max_entries=max_entries, max_bytes=max_bytes):
            ttl = entry.ttl
            if ttl is not None and ttl <= 0:
                continue
            options: dict[str, Any] = {"tags": list(entry.tags), "ttl_jitter": 0}
            if ttl is not None:
                options["ttl"] = ttl
                if entry.stale_ttl is not None and entry.stale_ttl > ttl:
                    options["stale_while_revalidate"] = entry.stale_ttl - ttl
                if entry.error_ttl is not None and entry.error_ttl > ttl:
                    options["stale_if_error"] = entry.error_ttl - ttl
            items.append(CacheEntry(entry.key, entry.value, options=options))
        return items
