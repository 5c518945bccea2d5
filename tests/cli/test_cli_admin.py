"""The admin CLI (stats, keys, inspect, invalidate, migrate-tag-index, doctor) run as a
subprocess against real redis-server processes, checked against what real stacks wrote."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from _cli_helpers import layercache

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisLayer,
    SyncCacheStack,
    SyncRedisInvalidationBus,
    SyncRedisTagIndex,
)
from layercache.redis._keys import tag_index_shard, tag_index_shard_of
from polling import eventually

pytestmark = pytest.mark.redis

USERS = 20


@pytest.fixture
def populated(redis_clean: Any) -> Iterator[Any]:
    """The session server holding what real stacks wrote: 20 tagged users (sync stack, tag
    index with 4 shards), a post with stale windows, a gzip-compressed blob, an entry written
    by the asyncio stack, and one value that is not ours."""
    url = redis_clean.url
    client = redis.Redis.from_url(url)
    index = SyncRedisTagIndex(client, known_keys_shards=4)
    stack = SyncCacheStack(
        [MemoryLayer(), RedisLayer(url=url, ttl=300)],
        tag_index=index,
        stale_while_revalidate=30,
        stale_if_error=120,
    )
    for i in range(USERS):
        stack.set(f"user:{i}", {"id": i, "name": f"user {i}"}, tags=["users", f"u{i}"], ttl=60)
    stack.set("post:1", "hello world", ttl=10)
    stack.close()
    zipped = SyncCacheStack([RedisLayer(url=url, ttl=300, compression="gzip")])
    zipped.set("blob:1", "x" * 5000, ttl=60)
    zipped.close()

    async def write_async() -> None:
        async with CacheStack([RedisLayer(url=url, ttl=300)]) as cache:
            await cache.set("async:1", [1, 2, 3], ttl=60)

    asyncio.run(write_async())
    client.set("layercache:foreign", b"not ours")
    try:
        yield redis_clean
    finally:
        client.close()


def test_stats_text_and_json(populated: Any) -> None:
    url = populated.url
    result = layercache("stats", "--redis", url, "--json")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    report = result.json()
    client = redis.Redis.from_url(url)
    info = client.info()
    client.close()
    assert report["redis"] == url
    assert report["nodes"] == 1
    assert report["cluster"] is False
    assert report["server"]["version"] == info["redis_version"]
    assert report["server"]["maxmemory_policy"] == info["maxmemory_policy"]
    keys = report["keys"]
    assert keys["complete"] is True
    # 20 users, post, blob, async, foreign; no bookkeeping keys were written.
    assert keys["total"] == USERS + 4
    assert keys["groups"] == {"user": USERS, "post": 1, "blob": 1, "async": 1, "(no ':')": 1}
    assert report["tag_index"] == {
        "prefix": "layercache:tag-index",
        "known_keys_shards": 4,
        "keys": USERS,
        "expiring": USERS,
    }
    assert report["memory"]["used_memory"] > 0
    text = layercache("stats", "--redis", url)
    assert text.code == 0, text.stderr
    assert re.search(rf"^\s+user\s+{USERS}$", text.stdout, re.MULTILINE), text.stdout
    assert f"Tag index 'layercache:tag-index': {USERS} tagged keys in 4" in text.stdout
    assert re.search(r"maxmemory-policy\s+\S+", text.stdout)


def test_keys_streams_matches_and_stops_at_the_limit(populated: Any) -> None:
    url = populated.url
    result = layercache("keys", "--redis", url, "--pattern", "user:1*", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    expected = {"user:1", *(f"user:{i}" for i in range(10, USERS))}
    assert set(report["keys"]) == expected
    assert report["count"] == len(expected)
    assert report["truncated"] is False
    limited = layercache("keys", "--redis", url, "--pattern", "*", "--limit", "3")
    assert limited.code == 0, limited.stderr
    lines = limited.stdout.splitlines()
    assert len(lines) == 3
    assert len(set(lines)) == 3
    assert "stopped at --limit 3" in limited.stderr
    # Raw Redis keys with an empty prefix; a deleted key's tombstone is not listed.
    stack = SyncCacheStack([RedisLayer(url=url, ttl=60)])
    stack.delete("user:2")
    stack.close()
    raw = layercache("keys", "--redis", url, "--prefix", "", "--pattern", "layercache:user:*")
    assert raw.code == 0, raw.stderr
    assert "layercache:user:2" not in raw.stdout.splitlines()
    assert len(raw.stdout.splitlines()) == USERS - 1


def test_inspect_decodes_entries_of_both_stacks(populated: Any) -> None:
    url = populated.url
    user = layercache("inspect", "--redis", url, "user:3", "--json")
    assert user.code == 0, user.stderr
    report = user.json()
    assert report["value"] == {"id": 3, "name": "user 3"}
    assert report["tags"] == ["users", "u3"]
    assert report["serializer"] == "json"
    assert report["compression"] == "none"
    assert report["state"] == "fresh"
    assert 0 < report["fresh_remaining"] <= 60
    assert 60 < report["stale_remaining"] <= 90  # 60 s fresh + 30 s stale-while-revalidate
    assert 120 < report["error_remaining"] <= 180
    client = redis.Redis.from_url(url)
    assert report["size_bytes"] == len(client.get("layercache:user:3"))
    client.close()
    blob = layercache("inspect", "--redis", url, "blob:1", "--json", "--preview", "50").json()
    assert blob["compression"] == "gzip"
    assert blob["value_truncated"] is True
    assert blob["value"] is None
    assert blob["value_preview"].startswith("'xxxx")
    assert blob["stale_until"] is None
    assert blob["error_until"] is None
    written_async = layercache("inspect", "--redis", url, "async:1", "--json").json()
    assert written_async["value"] == [1, 2, 3]
    assert written_async["value_type"] == "list"
    text = layercache("inspect", "--redis", url, "post:1")
    assert text.code == 0, text.stderr
    assert re.search(r"^state\s+fresh$", text.stdout, re.MULTILINE)
    assert re.search(r"^value \(str\)\s+'hello world'$", text.stdout, re.MULTILINE)
    assert re.search(r"^tags\s+\(none\)$", text.stdout, re.MULTILINE)
    foreign = layercache("inspect", "--redis", url, "foreign")
    assert foreign.code == 1
    assert "is not a layercache entry" in foreign.one_error_line()
    assert foreign.stdout == ""
    missing = layercache("inspect", "--redis", url, "nobody:1")
    assert missing.code == 1
    assert "no key 'nobody:1'" in missing.one_error_line()


def test_invalidate_counts_first_asks_then_deletes(populated: Any) -> None:
    url = populated.url
    client = redis.Redis.from_url(url)
    before = sorted(client.keys("*"))
    dry = layercache("invalidate", "--redis", url, "--tag", "users", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    assert dry.json()["matched"] == USERS
    assert dry.json()["dry_run"] is True
    dry_prefix = layercache("invalidate", "--redis", url, "--prefix", "user:1", "--dry-run")
    assert dry_prefix.code == 0, dry_prefix.stderr
    assert "dry run: 11 key(s) match prefix 'user:1'; nothing deleted" in dry_prefix.stdout
    assert sorted(client.keys("*")) == before  # a dry run deletes nothing
    refused = layercache("invalidate", "--redis", url, "--prefix", "user:", "--confirm-above", "5")
    assert refused.code == 1
    assert "--yes" in refused.one_error_line()
    assert "20 keys" in refused.stderr
    assert sorted(client.keys("*")) == before
    done = layercache(
        "invalidate", "--redis", url, "--prefix", "user:", "--confirm-above", "5", "--yes",
        "--json", "--progress",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    report = done.json()
    assert report["matched"] == USERS
    assert report["deleted"] == USERS
    assert report["announced"] is True
    assert "invalidating" in done.stderr  # the progress bar, on stderr only
    stack = SyncCacheStack([RedisLayer(url=url, ttl=60)])
    assert all(stack.get(f"user:{i}") is None for i in range(USERS))
    assert stack.get("post:1") == "hello world"
    stack.close()
    # Forgotten by the tag index too (delete_many removes keys from it).
    assert SyncRedisTagIndex(client, known_keys_shards=4).size() == 0
    client.close()


def test_invalidate_reaches_a_peers_l1_over_the_signed_bus(redis_clean: Any) -> None:
    url = redis_clean.url
    memory = MemoryLayer()
    bus = SyncRedisInvalidationBus(url=url, channel="cli-test:bus", signing_secret="s3cret")
    peer = SyncCacheStack(
        [memory, RedisLayer(url=url, ttl=60)],
        invalidation_bus=bus,
        tag_index=SyncRedisTagIndex(url=url, known_keys_shards=2),
    )
    try:
        peer.start()
        peer.set("item:1", "one", ttl=60)
        peer.set("item:2", "two", ttl=60, tags=["group"])
        assert memory.get("item:1") is not None
        assert memory.get("item:2") is not None
        env = {"BUS_SECRET": "s3cret"}
        common = ["--redis", url, "--bus-channel", "cli-test:bus", "--secret-env", "BUS_SECRET"]
        by_key = layercache("invalidate", *common, "--key", "item:1", env=env)
        assert by_key.code == 0, by_key.stderr
        assert "invalidated 1 key(s) matching key 'item:1'" in by_key.stdout
        eventually(lambda: memory.get("item:1") is None, what="peer L1 drops item:1")
        by_tag = layercache("invalidate", *common, "--tag", "group", env=env)
        assert by_tag.code == 0, by_tag.stderr
        eventually(lambda: memory.get("item:2") is None, what="peer L1 drops item:2")
        assert peer.get("item:1") is None
        assert peer.get("item:2") is None
        assert peer.get_stats().bus.rejected == 0  # signed with the right secret
        missing = layercache("invalidate", *common, "--key", "item:3")
        assert missing.code == 1
        assert "BUS_SECRET is not set" in missing.one_error_line()
    finally:
        peer.close()


def test_usage_errors_exit_2(redis_clean: Any) -> None:
    url = redis_clean.url
    for args in (
        ["invalidate", "--redis", url, "--tag", "a", "--key", "b"],
        ["invalidate", "--redis", url],
        ["keys", "--redis", url],
        ["keys", "--redis", url, "--pattern", "a\x01"],
        ["stats"],
        ["migrate-tag-index", "--redis", url],
        ["no-such-command"],
    ):
        result = layercache(*args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert result.one_error_line()


def test_require_tls_refuses_plain_urls_on_every_command() -> None:
    url = "redis://admin:hunter22@127.0.0.1:1"
    for args in (
        ["stats"],
        ["keys", "--pattern", "*"],
        ["inspect", "k"],
        ["invalidate", "--key", "k"],
        ["migrate-tag-index", "--known-key-shards", "4"],
        ["doctor"],
    ):
        result = layercache(*args, "--redis", url, "--require-tls")
        assert result.code == 1, (args, result.stderr)
        line = result.one_error_line()
        assert "--require-tls" in line
        assert "rediss://" in line
        assert "hunter22" not in result.stderr + result.stdout
        assert "admin:***@127.0.0.1:1" in line


def test_passwords_never_printed(own_redis: Any) -> None:
    password = "pw-7f3a9c"
    own_redis.command("CONFIG", "SET", "requirepass", password)
    try:
        good = f"redis://default:{password}@127.0.0.1:{own_redis.port}/0"
        for args in (["stats"], ["stats", "--json"], ["keys", "--pattern", "*", "--json"]):
            result = layercache(*args, "--redis", good)
            assert result.code == 0, result.stderr
            assert password not in result.stdout + result.stderr
        assert "default:***@" in layercache("stats", "--redis", good).stdout
        # From the environment instead of the command line.
        env_run = layercache("doctor", "--json", env={"LAYERCACHE_REDIS_URL": good})
        assert env_run.code == 1  # noeviction is the server default: critical
        assert password not in env_run.stdout + env_run.stderr
        wrong = f"redis://default:{password}x@127.0.0.1:{own_redis.port}/0"
        denied = layercache("stats", "--redis", wrong)
        assert denied.code == 1
        assert password not in denied.one_error_line()
        dead = layercache("keys", "--redis", f"redis://:{password}@127.0.0.1:1", "--pattern", "*")
        assert dead.code == 1
        line = dead.one_error_line()
        assert password not in line
        assert "redis://:***@127.0.0.1:1" in line
    finally:
        client = redis.Redis(host=own_redis.host, port=own_redis.port, password=password)
        client.config_set("requirepass", "")
        client.close()


def test_doctor_flags_noeviction_and_counts_bus_subscribers(own_redis: Any) -> None:
    client = redis.Redis(host=own_redis.host, port=own_redis.port)
    url = own_redis.url
    try:
        client.config_set("maxmemory-policy", "noeviction")
        bad = layercache("doctor", "--redis", url, "--json", "--samples", "5")
        assert bad.code == 1, bad.stderr
        report = bad.json()
        assert report["critical"] == 1
        critical = [f for f in report["findings"] if f["severity"] == "critical"]
        assert critical[0]["check"] == "maxmemory-policy"
        assert "allkeys-lru" in critical[0]["fix"]
        assert report["bus"] == {"channel": "layercache:invalidation", "subscribers": 0}
        assert report["latency"]["samples"] == 5
        assert report["latency"]["p50_ms"] > 0
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("maxmemory", "100mb")
        peer = SyncCacheStack(
            [MemoryLayer()], invalidation_bus=SyncRedisInvalidationBus(url=url, channel="doc:bus")
        )
        peer.start()
        try:
            good = layercache("doctor", "--redis", url, "--bus-channel", "doc:bus")
        finally:
            peer.close()
        assert good.code == 0, good.stdout + good.stderr
        assert re.search(
            r"^OK\s+bus: 1 subscriber\(s\) on the bus channel 'doc:bus'", good.stdout, re.M
        )
        assert re.search(
            r"^OK\s+maxmemory-policy: maxmemory-policy is allkeys-lru", good.stdout, re.M
        )
        assert "0 critical" in good.stdout
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "0")
        client.close()


def _shards(client: redis.Redis, prefix: str, count: int) -> dict[int, set[bytes]]:
    return {n: set(client.smembers(tag_index_shard(prefix, n))) for n in range(count)}


def test_migrate_tag_index_1_to_16_resumes_and_is_idempotent(redis_clean: Any) -> None:
    url = redis_clean.url
    client = redis.Redis.from_url(url)
    prefix = "mig:index"
    old = SyncRedisTagIndex(client, prefix=prefix, known_keys_shards=1)
    keys = [f"k:{i}" for i in range(300)]
    old.record_many([(k, ["all", f"t{i % 7}"], None) for i, k in enumerate(keys)])
    common = ["--redis", url, "--tag-index-prefix", prefix, "--known-key-shards", "16"]
    partial = layercache(
        "migrate-tag-index", *common, "--batch-size", "50", "--max-batches", "2", "--json"
    )
    assert partial.code == 0, partial.stderr
    assert partial.json()["finished"] is False
    assert partial.json()["layout"] == 1
    assert client.exists("{mig:index}:migration") == 1
    # Still the old layout meanwhile: the old-count instance finds every key.
    assert sorted(old.keys_matching("k:*")) == sorted(keys)
    other = layercache("migrate-tag-index", *common[:4], "--known-key-shards", "8")
    assert other.code == 1
    assert "run it again with --known-key-shards 16" in other.stderr
    rest = layercache("migrate-tag-index", *common, "--json")
    assert rest.code == 0, rest.stderr
    report = rest.json()
    assert report["finished"] is True
    assert report["resumed"] is True
    assert report["layout"] == 16
    assert report["known_keys"] == 300
    assert client.exists("{mig:index}:migration") == 0
    new = SyncRedisTagIndex(client, prefix=prefix, known_keys_shards=16)
    assert sorted(new.keys_matching("*")) == sorted(keys)
    assert new.size() == 300
    assert new.keys_for_tags(["t3"]) == {k for i, k in enumerate(keys) if i % 7 == 3}
    shards = _shards(client, prefix, 16)
    for number, members in shards.items():
        assert all(tag_index_shard_of(m, 16) == number for m in members)
    assert sum(len(m) for m in shards.values()) == 300
    # The new count writes and forgets normally; the old one is refused now.
    new.record("k:new", ["all"])
    new.remove(["k:0"])
    with pytest.raises(Exception, match="16 known-keys shards"):
        old.record("k:x", ["all"])
    snapshot = _shards(client, prefix, 16)
    again = layercache("migrate-tag-index", *common)
    assert again.code == 0, again.stderr
    assert "already uses 16 shards: 0 member(s) moved, 0 dropped" in again.stdout
    assert _shards(client, prefix, 16) == snapshot
    assert client.get("{mig:index}:layout") == b"16"
    client.close()


def test_dead_redis_is_one_line_without_traceback() -> None:
    for args in (["stats"], ["doctor"], ["invalidate", "--tag", "t"], ["inspect", "k"]):
        result = layercache(*args, "--redis", "redis://127.0.0.1:1", "--timeout", "1")
        assert result.code == 1, (args, result.stderr)
        line = result.one_error_line()
        assert "Redis at redis://127.0.0.1:1" in line


def test_cluster_keys_stats_and_invalidate(redis_cluster3: Any) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    redis_cluster3.flushall()
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster3.startup_nodes]
    )
    stack = SyncCacheStack(
        [RedisLayer(client=client, ttl=60)],
        tag_index=SyncRedisTagIndex(client, known_keys_shards=4),
    )
    names = [f"c:{i}" for i in range(60)]
    for i, key in enumerate(names):
        stack.set(key, i, tags=["even" if i % 2 == 0 else "odd"])
    stack.close()
    holders = {client.get_node_from_key(f"layercache:{k}").name for k in names}
    assert len(holders) > 1  # spread over several masters
    url = redis_cluster3.url
    listed = layercache("keys", "--redis", url, "--pattern", "c:*", "--json", "--limit", "0")
    assert listed.code == 0, listed.stderr
    assert sorted(listed.json()["keys"]) == sorted(names)
    streamed = layercache("keys", "--redis", url, "--pattern", "c:1*")
    assert sorted(streamed.stdout.split()) == sorted(k for k in names if k.startswith("c:1"))
    stats = layercache("stats", "--redis", url, "--json").json()
    assert stats["cluster"] is True
    assert stats["nodes"] == 3
    assert stats["keys"]["total"] == 60
    assert stats["tag_index"]["keys"] == 60
    dry = layercache("invalidate", "--redis", url, "--tag", "even", "--dry-run", "--json")
    assert dry.json()["matched"] == 30
    gone = layercache("invalidate", "--redis", url, "--tag", "even", "--json")
    assert gone.code == 0, gone.stderr
    assert gone.json()["deleted"] == 30
    by_pattern = layercache("invalidate", "--redis", url, "--pattern", "c:1?", "--json")
    assert by_pattern.code == 0, by_pattern.stderr
    assert by_pattern.json()["deleted"] == 5  # c:11, c:13, ..., c:19
    left = layercache("keys", "--redis", url, "--pattern", "*", "--json", "--limit", "0").json()
    expected = {k for i, k in enumerate(names) if i % 2 == 1} - {f"c:{i}" for i in range(10, 20)}
    assert set(left["keys"]) == expected
    client.close()


@pytest.fixture
def sentinel_port(own_redis: Any, tmp_path: Any) -> Iterator[int]:
    """A real ``redis-server --sentinel`` monitoring the module's own server as ``main``."""
    import subprocess

    from _redis_server import find_free_port

    port = find_free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {own_redis.port} 1\n"
    )
    process = subprocess.Popen(
        [own_redis.binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def knows_master() -> bool:
            try:
                probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
                try:
                    command = probe.execute_command  # type: ignore[no-untyped-call]
                    return bool(command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"))
                finally:
                    probe.close()
            except redis.RedisError:
                return process.poll() is not None  # ends the wait; the test then fails

        eventually(knows_master, what="sentinel answers for 'main'")
        assert process.poll() is None, "redis sentinel exited"
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_sentinel_url(own_redis: Any, sentinel_port: int) -> None:
    client = redis.Redis(host=own_redis.host, port=own_redis.port)
    client.flushall()
    stack = SyncCacheStack([RedisLayer(client=client, ttl=60)])
    stack.set("via:sentinel", {"ok": True}, tags=["s"])
    stack.close()
    client.close()
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/main"
    inspected = layercache("inspect", "--redis", url, "via:sentinel", "--json")
    assert inspected.code == 0, inspected.stderr
    assert inspected.json()["value"] == {"ok": True}
    listed = layercache("keys", "--redis", url, "--pattern", "via:*")
    assert listed.stdout.split() == ["via:sentinel"]
    refused = layercache("stats", "--redis", url, "--require-tls")
    assert refused.code == 1
    assert "rediss+sentinel://" in refused.one_error_line()
