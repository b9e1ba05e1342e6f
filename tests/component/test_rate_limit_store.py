"""The rate-limit store contract, run against the memory and the Redis implementation.

A ``Backend`` opens stores over one shared state: for memory that is the one process-wide store
(its time a fake clock the test moves), for Redis a new ``RedisRateLimitStore`` with its own
client and the same key prefix per ``open()``, i.e. another replica (its time the Redis server's
real clock: windows are short and the test waits them out).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
import redis.asyncio

from gateway.errors import RateLimited, StoreUnavailable
from gateway.stores.rate_limits import (
    Decision,
    Limit,
    LimitCheck,
    MemoryRateLimitStore,
    RateLimitStore,
    RedisRateLimitStore,
    headers,
    to_error,
)
from gateway.stores.redis_client import connect_redis
from tests.clock import FakeClock
from tests.waiting import eventually

# Long enough that a burst of requests falls inside one window however slow the machine: these
# tests are about counting, not about time.
LONG = 60.0
PATIENCE = 10.0


class Backend(Protocol):
    short_window: float  # a window the test can wait out

    async def open(self) -> RateLimitStore:
        """A store over the shared state."""

    def pass_time(self, seconds: float) -> None:
        """Let ``seconds`` pass (memory: the fake clock; Redis: real time passes while polling)."""


class MemoryBackend:
    short_window = 1.0

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.store = MemoryRateLimitStore(clock)

    async def open(self) -> RateLimitStore:
        return self.store

    def pass_time(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisBackend:
    short_window = 0.3

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._clients: list[redis.asyncio.Redis] = []

    async def open(self) -> RateLimitStore:
        client = connect_redis(self.url)
        self._clients.append(client)
        return RedisRateLimitStore(client, self.prefix)

    def pass_time(self, seconds: float) -> None:
        return None

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_backend(
    redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, key_prefix)
    yield backend
    await backend.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Backend:
    """Each contract test runs on both; only the Redis run asks for the Redis fixtures."""
    if request.param == "memory":
        return MemoryBackend(clock)
    redis_backend: RedisBackend = request.getfixturevalue("redis_backend")
    return redis_backend


def check(key: str, count: int = 10, window: float = LONG) -> LimitCheck:
    return LimitCheck(key, Limit(count, window))


async def fill(store: RateLimitStore, limit_check: LimitCheck) -> None:
    for _ in range(limit_check.limit.count):
        assert (await store.acquire([limit_check])).allowed


def admitted(store: RateLimitStore, *checks: LimitCheck) -> Callable[[], Awaitable[bool]]:
    async def poll() -> bool:
        return (await store.acquire(checks)).allowed
    return poll


# --- the contract ------------------------------------------------------------------------------


async def test_exactly_count_of_many_concurrent_requests_are_admitted(backend: Backend) -> None:
    store = await backend.open()
    place = check("user:alice:place", count=10)
    decisions = await asyncio.gather(*(store.acquire([place]) for _ in range(200)))
    assert sum(decision.allowed for decision in decisions) == 10
    refused = [decision for decision in decisions if not decision.allowed]
    assert all(0 < decision.retry_after <= LONG for decision in refused)


async def test_two_replicas_together_admit_exactly_count(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    place = check("account:desk-alpha:place", count=10)
    decisions = await asyncio.gather(*(first.acquire([place]) for _ in range(100)),
                                     *(second.acquire([place]) for _ in range(100)))
    assert sum(decision.allowed for decision in decisions) == 10


async def test_a_full_account_refuses_without_consuming_the_users_quota(backend: Backend) -> None:
    store = await backend.open()
    account = check("account:desk-alpha:place", count=3)
    await fill(store, account)

    refused = await store.acquire([check("user:alice:place", count=5), account])

    assert not refused.allowed
    assert refused.key == "account:desk-alpha:place"
    assert (refused.limit, refused.remaining) == (3, 0)
    alone = await store.acquire([check("user:alice:place", count=5)])
    assert alone.allowed
    assert alone.remaining == 4  # the refused request counted nowhere


async def test_an_admission_counts_in_every_check_and_names_the_tightest(
    backend: Backend,
) -> None:
    store = await backend.open()
    user, account = check("user:alice:place", count=5), check("account:desk:place", count=3)
    decision = await store.acquire([user, account])
    assert decision.allowed
    assert (decision.key, decision.limit, decision.remaining) == ("account:desk:place", 3, 2)
    assert (await store.acquire([user])).remaining == 3


async def test_admissions_count_down_and_a_refusal_says_when_to_retry(backend: Backend) -> None:
    store = await backend.open()
    place = check("user:alice:place", count=3)
    remaining = [(await store.acquire([place])).remaining for _ in range(3)]
    assert remaining == [2, 1, 0]

    refused = await store.acquire([place])

    assert not refused.allowed
    assert (refused.limit, refused.remaining) == (3, 0)
    assert 0 < refused.retry_after <= LONG
    assert 0 < refused.reset_after <= LONG
    error = to_error(refused, "place-order limit of user alice")
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.message == "place-order limit of user alice: 3 per 60 s"
    assert error.headers()["RateLimit-Limit"] == "3"
    assert error.headers()["RateLimit-Remaining"] == "0"
    assert 1 <= int(error.headers()["Retry-After"]) <= LONG


async def test_admitted_again_once_the_window_has_passed(backend: Backend) -> None:
    store = await backend.open()
    place = check("user:alice:place", count=2, window=backend.short_window)
    await fill(store, place)
    assert not (await store.acquire([place])).allowed

    backend.pass_time(backend.short_window)

    assert await eventually(admitted(store, place), within=PATIENCE)


async def test_separate_keys_do_not_share_a_quota(backend: Backend) -> None:
    store = await backend.open()
    await fill(store, check("user:alice:place", count=2))
    assert not (await store.acquire([check("user:alice:place", count=2)])).allowed
    assert (await store.acquire([check("user:alice:cancel", count=2)])).allowed
    assert (await store.acquire([check("user:bob:place", count=2)])).allowed


async def test_malformed_checks_are_refused(backend: Backend) -> None:
    store = await backend.open()
    with pytest.raises(ValueError, match="at least one"):
        await store.acquire([])
    with pytest.raises(ValueError, match="only once"):
        await store.acquire([check("user:alice:place"), check("user:alice:place")])
    with pytest.raises(ValueError, match="at least one request"):
        Limit(0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        Limit(1, 0.0)


# --- rendering ---------------------------------------------------------------------------------


def test_headers_of_an_admitted_response_round_the_reset_up() -> None:
    decision = Decision(allowed=True, key="user:alice:place", limit=10, remaining=4,
                        reset_after=2.2, retry_after=0.0, window=10.0)
    assert headers(decision) == {"RateLimit-Limit": "10", "RateLimit-Remaining": "4",
                                 "RateLimit-Reset": "3"}


def test_headers_never_say_reset_now_when_nothing_is_left() -> None:
    decision = Decision(allowed=True, key="user:alice:place", limit=10, remaining=0,
                        reset_after=0.0, retry_after=0.0, window=10.0)
    assert headers(decision)["RateLimit-Reset"] == "1"


def test_an_admitted_decision_is_not_an_error() -> None:
    decision = Decision(allowed=True, key="k", limit=1, remaining=0, reset_after=1.0,
                        retry_after=0.0, window=1.0)
    with pytest.raises(ValueError, match="not an error"):
        to_error(decision, "anything")


def test_the_429_rounds_retry_after_up_to_whole_seconds() -> None:
    decision = Decision(allowed=False, key="account:desk:cancel", limit=20, remaining=0,
                        reset_after=0.25, retry_after=0.25, window=1.0)
    error = to_error(decision, "cancel-order limit of account desk")
    assert isinstance(error, RateLimited)
    assert error.message == "cancel-order limit of account desk: 20 per 1 s"
    assert error.headers()["Retry-After"] == "1"
    assert error.headers()["RateLimit-Reset"] == "1"


# --- memory only: exact time -------------------------------------------------------------------


async def test_the_window_slides_rather_than_resetting(clock: FakeClock) -> None:
    store = MemoryRateLimitStore(clock)
    place = check("user:alice:place", count=3, window=1.0)
    await store.acquire([place])
    await store.acquire([place])
    clock.advance(0.5)
    await store.acquire([place])
    clock.advance(0.1)
    refused = await store.acquire([place])
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.4)  # the two oldest expire at 1.0

    clock.advance(0.4)
    assert [(await store.acquire([place])).allowed for _ in range(3)] == [True, True, False]


async def test_the_retry_after_of_several_full_checks_is_the_latest(clock: FakeClock) -> None:
    store = MemoryRateLimitStore(clock)
    user, account = check("user:alice:place", 1, 1.0), check("account:desk:place", 1, 5.0)
    await store.acquire([user, account])
    refused = await store.acquire([user, account])
    assert refused.key == "user:alice:place"  # the first full check
    assert refused.retry_after == pytest.approx(5.0)  # but the account frees up last


async def test_the_memory_store_forgets_idle_keys(clock: FakeClock) -> None:
    store = MemoryRateLimitStore(clock)
    for user in range(100):
        await store.acquire([check(f"user:{user}:place", count=1, window=1.0)])
    clock.advance(1.0)
    for _ in range(200):  # decisions on one busy key sweep the idle ones
        await store.acquire([check("user:busy:place", count=1, window=1.0)])
    assert store.tracked_keys == 1


# --- Redis only --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keys_live_under_the_prefix_and_expire_with_the_window(
    redis_backend: RedisBackend, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = await redis_backend.open()
    await store.acquire([check("user:alice:place", count=5, window=2.0)])
    keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
    assert keys == [f"{key_prefix}ratelimit:user:alice:place".encode()]
    assert 0 < await redis_client.pttl(keys[0]) <= 2000


async def test_an_unreachable_redis_is_a_store_unavailable(unused_tcp_port: int) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}/0")
    store = RedisRateLimitStore(client, "test:unreachable:")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.acquire([check("user:alice:place")])
        assert raised.value.code == "rate_limit_unavailable"
    finally:
        await store.close()
        await client.aclose()
