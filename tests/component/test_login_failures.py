"""The failed sign-in counts, in one process and in Redis: the same contract on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.core.backoff import BackoffPolicy
from gateway.stores.login_failures import (
    LoginFailureStore,
    MemoryLoginFailureStore,
    RedisLoginFailureStore,
)
from gateway.stores.redis_client import connect_redis
from tests.clock import FakeClock

POLICY = BackoffPolicy(free_failures=2, base_delay=10.0, max_delay=40.0, forget_after=600.0)


@pytest.fixture
async def redis_store(redis_url: str, redis_client: redis.asyncio.Redis,
                      key_prefix: str) -> AsyncIterator[RedisLoginFailureStore]:
    client = connect_redis(redis_url)
    yield RedisLoginFailureStore(client, key_prefix, POLICY)
    await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> LoginFailureStore:
    if request.param == "memory":
        return MemoryLoginFailureStore(POLICY, FakeClock())
    redis_store: RedisLoginFailureStore = request.getfixturevalue("redis_store")
    return redis_store


def test_the_first_failures_are_free_then_each_doubles_the_wait_up_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 7)] == [0, 0, 10, 20, 40, 40]
    assert BackoffPolicy().delay(10_000) == BackoffPolicy().max_delay


def test_a_policy_that_forgets_before_its_longest_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="forget_after"):
        BackoffPolicy(max_delay=600, forget_after=60)


async def test_a_key_waits_once_its_free_failures_are_spent(store: LoginFailureStore) -> None:
    for _ in range(POLICY.free_failures):
        await store.failed(["client:a"])
        assert await store.wait(["client:a"]) == 0
    await store.failed(["client:a"])
    assert 9 < await store.wait(["client:a"]) <= 10
    await store.failed(["client:a"])
    assert 19 < await store.wait(["client:a", "client:b"]) <= 20


async def test_a_failure_counts_against_every_key_and_forgetting_one_keeps_the_other(
    store: LoginFailureStore,
) -> None:
    for _ in range(POLICY.free_failures + 1):
        await store.failed(["client:a", "address:10.0.0.1"])
    await store.forget("client:a")
    assert await store.wait(["client:a"]) == 0
    assert await store.wait(["address:10.0.0.1"]) > 9


async def test_concurrent_failures_all_count(store: LoginFailureStore) -> None:
    await asyncio.gather(*(store.failed(["client:a"]) for _ in range(POLICY.free_failures + 3)))
    assert await store.wait(["client:a"]) > 39


async def test_a_run_of_failures_is_forgotten_after_the_quiet_period() -> None:
    clock = FakeClock()
    store = MemoryLoginFailureStore(POLICY, clock)
    for _ in range(POLICY.free_failures + 1):
        await store.failed(["client:a"])
    clock.advance(POLICY.forget_after)
    await store.failed(["client:a"])
    assert await store.wait(["client:a"]) == 0


async def test_the_memory_store_forgets_the_oldest_keys_past_its_budget() -> None:
    """An address spray cannot grow the table without bound: the stalest keys go first."""
    store = MemoryLoginFailureStore(POLICY, FakeClock(), max_keys=100)
    spent = ["client:a"] * (POLICY.free_failures + 1)
    for key in spent:
        await store.failed([key])
    assert await store.wait(["client:a"]) > 0
    for number in range(100):
        await store.failed([f"address:{number}"] * (POLICY.free_failures + 1))
    assert await store.wait(["client:a"]) == 0
    assert await store.wait(["address:99"]) > 0


@pytest.mark.redis
async def test_the_redis_keys_expire_after_the_quiet_period(
    redis_store: RedisLoginFailureStore, redis_client: redis.asyncio.Redis, key_prefix: str,
) -> None:
    await redis_store.failed(["client:a"])
    ttl = await redis_client.pttl(f"{key_prefix}login:client:a")
    assert 0 < ttl <= POLICY.forget_after * 1000
