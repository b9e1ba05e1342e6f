"""The cluster relay's shared state in real Redis: fenced leases, snapshots, presence, demand,
and the relay bus over pub/sub.

What a desk notices: two processes never lead one market at once, a leader that lost its lease
cannot write into its successor's stream, a follower can always start from a snapshot that
matches the last message, and the ticker's leader subscribes what every replica's clients follow.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from gateway.core.relay_order import Position
from gateway.errors import StoreUnavailable
from gateway.stores.market_relay import Demand, RedisRelayStore
from gateway.stores.redis_client import connect_redis
from gateway.stores.relay_bus import RelayBus
from tests.waiting import eventually

pytestmark = pytest.mark.redis
STREAM = "depth:BCCBTC"


@pytest.fixture
def store(redis_client: redis.asyncio.Redis, key_prefix: str) -> RedisRelayStore:
    return RedisRelayStore(redis_client, key_prefix)


async def test_one_holder_at_a_time_and_each_new_lease_a_higher_token(
    store: RedisRelayStore,
) -> None:
    first = await store.acquire(STREAM, "a", 30)
    assert first is not None
    assert await store.acquire(STREAM, "b", 30) is None
    assert await store.renew(STREAM, first, 30, 120)
    await store.release(STREAM, first)
    second = await store.acquire(STREAM, "b", 30)
    assert second is not None
    assert second.token > first.token
    assert not await store.renew(STREAM, first, 30, 120)  # the old lease proves nothing now


async def test_a_lapsed_lease_goes_to_another_holder(store: RedisRelayStore) -> None:
    first = await store.acquire(STREAM, "a", 0.2)
    assert first is not None

    async def taken() -> bool:
        return await store.acquire(STREAM, "b", 30) is not None

    assert await eventually(taken, 5)
    assert not await store.renew(STREAM, first, 30, 120)


async def test_a_publish_writes_the_snapshot_with_its_messages_only_under_the_lease(
    store: RedisRelayStore, redis_client: redis.asyncio.Redis,
) -> None:
    lease = await store.acquire(STREAM, "a", 30)
    assert lease is not None
    assert await store.publish(STREAM, lease, Position(lease.token, 0), {"book": "A", "x": "1"},
                               [], reset=True, snapshot_ttl=60)
    assert await store.publish(STREAM, lease, Position(lease.token, 2), {"book": "B"},
                               ["m1", "m2"], reset=False, snapshot_ttl=60)
    snapshot = await store.snapshot(STREAM)
    assert snapshot is not None
    assert snapshot.position == Position(lease.token, 2)
    assert snapshot.fields == {"book": "B", "x": "1"}
    await store.release(STREAM, lease)
    successor = await store.acquire(STREAM, "b", 30)
    assert successor is not None
    assert not await store.publish(STREAM, lease, Position(lease.token, 3), {"book": "stale"},
                                   ["m3"], reset=False, snapshot_ttl=60)
    assert await store.publish(STREAM, successor, Position(successor.token, 0), {"book": "C"},
                               [], reset=True, snapshot_ttl=60)
    snapshot = await store.snapshot(STREAM)
    assert snapshot is not None
    assert snapshot.fields == {"book": "C"}  # reset: the old leader's fields are gone


async def test_presence_counts_the_other_replicas_until_their_ttl_lapses(
    store: RedisRelayStore,
) -> None:
    assert await store.presence(STREAM, "a", True, 30) == 0
    assert await store.presence(STREAM, "b", True, 0.2) == 1
    assert await store.presence(STREAM, "a", False, 30) == 1

    async def lapsed() -> bool:
        return await store.presence(STREAM, "a", True, 30) == 0

    assert await eventually(lapsed, 5)


async def test_the_ticker_demand_is_the_union_of_the_live_replicas_lists(
    store: RedisRelayStore,
) -> None:
    await store.set_demand("a", Demand(frozenset({"BCCBTC"}), frozenset()), 30)
    await store.set_demand("b", Demand(frozenset({"ETHBTC"}), frozenset({"BCCBTC"})), 0.2)
    assert await store.demand() == Demand(frozenset({"BCCBTC", "ETHBTC"}), frozenset({"BCCBTC"}))

    async def lapsed() -> bool:
        return await store.demand() == Demand(frozenset({"BCCBTC"}), frozenset())

    assert await eventually(lapsed, 5)


async def test_a_listener_gets_the_published_messages_in_order(
    store: RedisRelayStore, redis_url: str,
) -> None:
    client = connect_redis(redis_url)
    bus = RelayBus(client)
    received: list[bytes] = []
    subscribed = asyncio.Event()

    class Listener:
        def relayed(self, payload: bytes) -> None:
            received.append(payload)

        def subscribed(self) -> None:
            subscribed.set()

        def bus_lost(self) -> None:
            pass

    bus.start()
    try:
        await bus.listen(store.channel(STREAM), Listener())
        await asyncio.wait_for(subscribed.wait(), 5)
        lease = await store.acquire(STREAM, "a", 30)
        assert lease is not None
        assert await store.publish(STREAM, lease, Position(lease.token, 3), {},
                                   ["1", "2", "3"], reset=False, snapshot_ttl=60)
        async def all_three() -> bool:
            return len(received) == 3

        assert await eventually(all_three, 5)
        assert received == [b"1", b"2", b"3"]
    finally:
        await bus.close()
        await client.aclose()


async def test_every_call_says_when_redis_is_unavailable() -> None:
    client = connect_redis("redis://127.0.0.1:1/0", timeout=0.5)
    store = RedisRelayStore(client, "none:")
    try:
        with pytest.raises(StoreUnavailable):
            await store.acquire(STREAM, "a", 30)
        with pytest.raises(StoreUnavailable):
            await store.snapshot(STREAM)
    finally:
        await client.aclose()
