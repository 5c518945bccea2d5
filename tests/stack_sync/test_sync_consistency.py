"""A fetch in flight across an invalidation (from another thread) returns but never stores."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from stack_support import ABSENT
from sync_stack_support import Held, Runner, SyncEnv, wait_until

from layercache import SyncCacheStack

INVALIDATIONS: dict[str, Callable[[SyncCacheStack], object]] = {
    "delete": lambda c: c.delete("user:1"),
    "delete_many": lambda c: c.delete_many(["other", "user:1"]),
    "clear": lambda c: c.clear(),
    "tag": lambda c: c.invalidate_by_tag("users"),
    "tags_any": lambda c: c.invalidate_by_tags(["nope", "users"], mode="any"),
    "tags_all": lambda c: c.invalidate_by_tags(["users", "tenant:a"], mode="all"),
    "pattern": lambda c: c.invalidate_by_pattern("user:*"),
    "prefix": lambda c: c.invalidate_by_prefix("user:"),
    "namespace_clear": lambda c: c.namespace("user").clear(),
}


@pytest.mark.parametrize("operation", list(INVALIDATIONS))
def test_invalidation_during_fetch_is_not_undone(senv: SyncEnv, operation: str) -> None:
    fetch = Held({"name": "stale"})
    reader = Runner(lambda: senv.cache.get("user:1", fetch, tags=["users", "tenant:a"]))
    assert fetch.started.wait(5)
    # The invalidation runs on yet another thread than the reader (and the test thread).
    Runner(lambda: INVALIDATIONS[operation](senv.cache)).join()
    fetch.release.set()
    assert reader.join() == {"name": "stale"}, "the in-flight fetch must still return its value"
    assert senv.layer_values("user:1") == [ABSENT] * len(senv.layers), (
        f"a fetch in flight across {operation} stored its value"
    )
    fresh = Held({"name": "fresh"})
    fresh.release.set()
    assert senv.cache.get("user:1", fresh) == {"name": "fresh"}
    assert fresh.calls == 1
    assert senv.layer_values("user:1") == [{"name": "fresh"}] * len(senv.layers)


@pytest.mark.parametrize("operation", ["tag", "pattern", "prefix"])
def test_refetch_of_an_expired_tagged_key_is_not_undone(senv: SyncEnv, operation: str) -> None:
    senv.cache.set("user:1", "old", ttl=5, tags=["users", "tenant:a"])
    senv.clock.advance(6)
    fetch = Held("refetched")
    reader = Runner(lambda: senv.cache.get("user:1", fetch, tags=["users", "tenant:a"]))
    assert fetch.started.wait(5)
    INVALIDATIONS[operation](senv.cache)
    fetch.release.set()
    assert reader.join() == "refetched"
    assert senv.cache.get("user:1") is None
    for value in senv.layer_values("user:1"):
        assert value != "refetched", f"the refetch survived {operation}"


def test_explicit_set_during_fetch_wins(senv: SyncEnv) -> None:
    fetch = Held("from-fetch")
    reader = Runner(lambda: senv.cache.get("k", fetch))
    assert fetch.started.wait(5)
    senv.cache.set("k", "explicit")
    fetch.release.set()
    assert reader.join() == "from-fetch"
    assert senv.layer_values("k") == ["explicit"] * len(senv.layers)
    assert senv.cache.get("k") == "explicit"


def test_invalidation_of_other_keys_does_not_block_storing(senv: SyncEnv) -> None:
    fetch = Held("kept")
    reader = Runner(lambda: senv.cache.get("post:1", fetch, tags=["posts"]))
    assert fetch.started.wait(5)
    senv.cache.delete("post:2")
    senv.cache.invalidate_by_tag("users")
    senv.cache.invalidate_by_pattern("user:*")
    senv.cache.invalidate_by_prefix("post:1:")
    fetch.release.set()
    assert reader.join() == "kept"
    assert senv.layer_values("post:1") == ["kept"] * len(senv.layers)


def test_a_thread_arriving_after_the_invalidation_gets_a_new_fetch(senv: SyncEnv) -> None:
    old = Held("before-delete")
    first = Runner(lambda: senv.cache.get("k", old))
    assert old.started.wait(5)
    senv.cache.delete("k")
    new = Held("after-delete")
    new.release.set()
    second = Runner(lambda: senv.cache.get("k", new))
    wait_until(
        lambda: new.calls == 1 or senv.cache.get_metrics().stampede_dedupes == 1,
        "the second read to reach the single-flight",
    )
    old.release.set()
    assert first.join() == "before-delete"
    assert second.join() == "after-delete", "a read issued after delete() got pre-delete data"
    assert new.calls == 1
    assert senv.cache.get("k") == "after-delete"
