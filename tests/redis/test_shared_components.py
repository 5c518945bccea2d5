"""One component serving several stacks: a stack never reconfigures what it is given (issue 12).

Before, a stack called ``configure(lease=...)`` on its single-flight coordinator and
``set_error_handler`` on its coordinator and layers: two stacks sharing one component left it
with the last stack's lease, and only the last stack heard of its failures (the first stack's
``error`` event went silent).
"""

from __future__ import annotations

from typing import Any

import pytest

from layercache import CacheStack, MemoryLayer, RedisLayer, RedisSingleFlightCoordinator

pytestmark = pytest.mark.redis


async def test_two_stacks_keep_their_own_lease_on_one_coordinator(redis_client: Any) -> None:
    coordinator = RedisSingleFlightCoordinator(redis_client, prefix="shared:sf", lease=30.0)
    short = CacheStack(
        [MemoryLayer(), RedisLayer(client=redis_client, prefix="shared:a:")],
        single_flight_coordinator=coordinator,
        single_flight_lease=0.9,
    )
    default = CacheStack(
        [MemoryLayer(), RedisLayer(client=redis_client, prefix="shared:b:")],
        single_flight_coordinator=coordinator,
    )
    assert coordinator.lease == 30.0  # building a stack changes nothing on the coordinator
    lock_ttls: dict[str, int] = {}

    def fetcher(name: str) -> Any:
        async def fetch() -> str:
            keys = [k async for k in redis_client.scan_iter(match=b"shared:sf*")]
            locks = [k for k in keys if name.encode() in k]
            assert locks, keys
            lock_ttls[name] = await redis_client.pttl(locks[0])
            return name

        return fetch

    async with short, default:
        assert await short.get("key-short", fetcher("key-short")) == "key-short"
        assert await default.get("key-default", fetcher("key-default")) == "key-default"
    assert 0 < lock_ttls["key-short"] <= 900
    assert 900 < lock_ttls["key-default"] <= 30_000
    assert coordinator.lease == 30.0


async def test_every_stack_sharing_a_layer_hears_of_its_unreadable_values(
    redis_client: Any,
) -> None:
    layer = RedisLayer(client=redis_client, prefix="shared:l:")
    own: list[dict[str, Any]] = []
    layer.set_error_handler(lambda exc, context: own.append(context))
    first, second = CacheStack([layer]), CacheStack([layer])
    heard: dict[str, list[Any]] = {"first": [], "second": []}
    first.on("error", heard["first"].append)
    second.on("error", heard["second"].append)
    await redis_client.set(b"shared:l:bad", b"not an entry")
    async with first, second:
        assert await first.get("bad") is None
        assert await second.get("bad") is None
        # Each read was reported to both stacks and to the layer owner's own handler.
        assert len(heard["first"]) == 2
        assert len(heard["second"]) == 2
        assert len(own) == 2
    # Closed stacks hear nothing more; the owner's handler stays.
    assert await layer.get("bad") is None
    assert len(heard["first"]) == 2
    assert len(heard["second"]) == 2
    assert len(own) == 3
