"""The reconciler's shared state in Redis: one sweeping replica at a time, a cursor that only
moves forward.

What a desk notices: two replicas never both sweep the trail for a dead replica's calls (each
would settle them, twice), a replica that dies lets another take over once its lease lapses,
and the sweep never goes back over what is settled.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from gateway.errors import StoreUnavailable
from gateway.stores.reconcile_state import RedisReconcileState

pytestmark = pytest.mark.redis
LEASE = 0.3


@pytest.fixture
def state(redis_client: redis.asyncio.Redis, key_prefix: str) -> RedisReconcileState:
    return RedisReconcileState(redis_client, key_prefix)


async def test_one_replica_holds_the_lock_and_renews_it(
    state: RedisReconcileState, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    assert await state.acquire("replica-a", 30)
    assert not await state.acquire("replica-b", 30)
    assert await state.acquire("replica-a", 60)  # a renewal: the lease starts again, longer
    assert await redis_client.pttl(f"{key_prefix}reconcile:lock") > 30_000
    assert not await state.acquire("replica-b", 30)


async def test_a_lapsed_lock_goes_to_another_replica(state: RedisReconcileState) -> None:
    assert await state.acquire("replica-a", LEASE)

    async def taken_over() -> bool:
        for _ in range(50):  # bounded: the lease is 0.3 s
            if await state.acquire("replica-b", LEASE):
                return True
            await asyncio.sleep(0.05)
        return False
    assert await taken_over()
    assert not await state.acquire("replica-a", LEASE)


async def test_only_the_holder_releases_the_lock(state: RedisReconcileState) -> None:
    assert await state.acquire("replica-a", 30)
    await state.release("replica-b")
    assert not await state.acquire("replica-b", 30)
    await state.release("replica-a")
    assert await state.acquire("replica-b", 30)


async def test_the_cursor_starts_at_zero_and_never_moves_back(state: RedisReconcileState) -> None:
    assert await state.cursor() == 0
    await state.set_cursor(42)
    await state.set_cursor(17)
    assert await state.cursor() == 42


async def test_an_unreachable_redis_is_a_store_failure(unused_tcp_port: int) -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await RedisReconcileState(client, "nowhere:").acquire("replica-a", LEASE)
    finally:
        await client.aclose()
