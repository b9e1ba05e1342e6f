"""The market cache store contract, run against the memory and the Redis implementation.

A ``Backend`` opens stores over one shared state: for memory that is the one process-wide store,
for Redis a new ``RedisMarketCacheStore`` on its own client (the same key prefix) per ``open()``,
i.e. another replica. Expiry is driven by ``let_pass``: memory advances a fake clock; Redis lets
real time run, so expiries there use a short duration and a bounded wait (``patience``), never a
timing assertion.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
import redis.asyncio
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.stores.market_cache import (
    CachedResponse,
    MarketCacheStore,
    MemoryMarketCacheStore,
    RedisMarketCacheStore,
)
from gateway.stores.redis_client import connect_redis
from tests.clock import FakeClock
from tests.waiting import eventually

T0 = 1_700_000_000.0
SHORT = 0.2  # a retain_for / hold_for that Redis lets run out in real time
LONG = 60.0  # outlives any test
PATIENCE = 10.0  # bounds a wait for an expiry to show; it measures nothing
KEY = "ticker:BCCBTC"
JSON = "application/json; charset=utf-8"
TICKER = CachedResponse(b'{"result":{"last":"0.1"}}', JSON, T0 + 0.123456789)




class Backend(Protocol):
    patience: float

    async def open(self) -> MarketCacheStore:
        """A store over the shared state (for Redis: another replica)."""

    async def let_pass(self, seconds: float) -> None:
        """Let ``seconds`` pass for the store's expiry decisions."""


class MemoryBackend:
    patience = 0.0  # the fake clock decides: waiting in real time changes nothing

    def __init__(self) -> None:
        self.clock = FakeClock(1000.0)
        self.store = MemoryMarketCacheStore(self.clock)

    async def open(self) -> MarketCacheStore:
        return self.store

    async def let_pass(self, seconds: float) -> None:
        self.clock.now += seconds


class RedisBackend:
    patience = PATIENCE

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._clients: list[redis.asyncio.Redis] = []

    async def open(self) -> RedisMarketCacheStore:
        client = connect_redis(self.url)
        self._clients.append(client)
        return RedisMarketCacheStore(client, self.prefix)

    async def let_pass(self, seconds: float) -> None:
        return None  # real time runs; callers wait for the effect with ``eventually``

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def redis_backend(
    redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, key_prefix)
    yield backend
    await backend.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each contract test runs on both; only the Redis run asks for the Redis fixtures."""
    if request.param == "memory":
        return MemoryBackend()
    redis_backend: RedisBackend = request.getfixturevalue("redis_backend")
    return redis_backend




def missing(store: MarketCacheStore, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.get(key) is None
    return check


# --- the contract: values ----------------------------------------------------------------------


async def test_a_missing_key_is_none(backend: Backend) -> None:
    store = await backend.open()
    assert await store.get(KEY) is None


@pytest.mark.parametrize("value", [
    TICKER,
    CachedResponse(bytes(range(256)) + b"\xff\xfe\n\r\n", "application/octet-stream", T0),
    CachedResponse(b"", JSON, 0.1 + 0.2),
    CachedResponse(b"\n\n{}\n", "", -1.5),
], ids=["json", "non-utf8-with-newlines", "empty-body", "empty-content-type"])
async def test_a_put_value_round_trips_exactly(backend: Backend, value: CachedResponse) -> None:
    store = await backend.open()
    await store.put(KEY, value, retain_for=LONG)
    for view in (store, await backend.open()):  # this store, and another replica
        got = await view.get(KEY)
        assert got == value
        assert got is not None
        assert type(got.body) is bytes
        assert got.stored_at == value.stored_at  # exactly, not approximately


async def test_keys_are_opaque_and_independent(backend: Backend) -> None:
    store = await backend.open()
    odd = "depth:BCC BTC*?[x]:é"
    other = CachedResponse(b"[]", JSON, T0)
    await store.put(odd, TICKER, retain_for=LONG)
    await store.put("markets", other, retain_for=LONG)
    assert await store.get(odd) == TICKER
    assert await store.get("markets") == other
    assert await store.get("depth:BCC") is None


async def test_a_newer_put_replaces_and_restarts_the_retention(backend: Backend) -> None:
    store = await backend.open()
    newer = CachedResponse(b'{"result":{"last":"0.2"}}', "application/json", T0 + 5)
    await store.put(KEY, TICKER, retain_for=10)
    await backend.let_pass(5)
    await store.put(KEY, newer, retain_for=10)
    await backend.let_pass(7)  # past the first put's retention, inside the second's
    assert await store.get(KEY) == newer


async def test_a_value_is_kept_for_retain_for(backend: Backend) -> None:
    store = await backend.open()
    await store.put(KEY, TICKER, retain_for=LONG)
    await backend.let_pass(LONG - 1)
    assert await store.get(KEY) == TICKER


async def test_a_value_is_forgotten_after_retain_for(backend: Backend) -> None:
    store = await backend.open()
    await store.put(KEY, TICKER, retain_for=SHORT)
    await backend.let_pass(SHORT)
    assert await eventually(missing(store, KEY), within=backend.patience)
    assert await eventually(missing(await backend.open(), KEY), within=backend.patience)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
async def test_durations_must_be_positive_and_finite(backend: Backend, seconds: float) -> None:
    store = await backend.open()
    with pytest.raises(ValueError, match="retain_for"):
        await store.put(KEY, TICKER, retain_for=seconds)
    with pytest.raises(ValueError, match="hold_for"):
        await store.try_lock(KEY, hold_for=seconds)
    assert await store.get(KEY) is None


async def test_a_content_type_with_a_line_break_is_refused(backend: Backend) -> None:
    store = await backend.open()
    with pytest.raises(ValueError, match="line break"):
        await store.put(KEY, CachedResponse(b"{}", "text/plain\nX: y", T0), retain_for=LONG)


# --- the contract: refresh locks ---------------------------------------------------------------


async def test_one_caller_at_a_time_holds_the_lock(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    token = await first.try_lock(KEY, hold_for=LONG)
    assert isinstance(token, str)
    assert token
    assert await second.try_lock(KEY, hold_for=LONG) is None
    assert await first.try_lock(KEY, hold_for=LONG) is None  # not re-entrant either
    assert await first.get(KEY) is None  # a lock is not a value

    await first.unlock(KEY, token)
    again = await second.try_lock(KEY, hold_for=LONG)
    assert again is not None
    assert again != token


async def test_locks_are_per_key(backend: Backend) -> None:
    store = await backend.open()
    assert await store.try_lock(KEY, hold_for=LONG) is not None
    assert await store.try_lock("depth:BCCBTC", hold_for=LONG) is not None


async def test_a_wrong_token_does_not_release_the_lock(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    token = await first.try_lock(KEY, hold_for=LONG)
    assert token is not None
    await second.unlock(KEY, "not-the-token")
    await second.unlock("depth:BCCBTC", token)  # the right token, the wrong key
    assert await second.try_lock(KEY, hold_for=LONG) is None


async def test_a_lock_is_held_for_hold_for(backend: Backend) -> None:
    store = await backend.open()
    assert await store.try_lock(KEY, hold_for=LONG) is not None
    await backend.let_pass(LONG - 1)
    assert await store.try_lock(KEY, hold_for=LONG) is None


async def test_a_lock_expires_by_itself_and_a_stale_token_releases_nothing(
    backend: Backend,
) -> None:
    first, second = await backend.open(), await backend.open()
    stale = await first.try_lock(KEY, hold_for=SHORT)
    assert stale is not None
    await backend.let_pass(SHORT)
    taken: list[str] = []

    async def acquired() -> bool:
        token = await second.try_lock(KEY, hold_for=LONG)
        taken.extend([token] if token is not None else [])
        return bool(taken)
    assert await eventually(acquired, within=backend.patience)

    await first.unlock(KEY, stale)  # the old holder, late: must not release the new one's lock
    assert await first.try_lock(KEY, hold_for=LONG) is None
    await second.unlock(KEY, taken[0])
    assert await first.try_lock(KEY, hold_for=LONG) is not None


# --- memory only: bounded ----------------------------------------------------------------------


async def test_the_memory_store_sweeps_expired_values_it_is_never_asked_for() -> None:
    clock = FakeClock(1000.0)
    store = MemoryMarketCacheStore(clock)
    for number in range(1000):
        await store.put(f"ticker:M{number}", TICKER, retain_for=1)
        await store.put(KEY, TICKER, retain_for=LONG)  # rewrites of one key
    assert store.entries == 1001
    clock.now += 1
    await store.put("markets", TICKER, retain_for=LONG)
    assert store.entries == 2
    clock.now += LONG
    assert await store.get(KEY) is None
    assert store.entries == 1


# --- Redis only: replicas, layout, outages -----------------------------------------------------


@pytest.mark.redis
async def test_two_replicas_share_values_and_locks(redis_backend: RedisBackend) -> None:
    first, second = await redis_backend.open(), await redis_backend.open()
    await first.put(KEY, TICKER, retain_for=LONG)
    assert await second.get(KEY) == TICKER
    token = await second.try_lock(KEY, hold_for=LONG)
    assert token is not None
    assert await first.try_lock(KEY, hold_for=LONG) is None
    await second.unlock(KEY, token)
    assert await first.try_lock(KEY, hold_for=LONG) is not None


@pytest.mark.redis
async def test_the_redis_layout_is_one_key_per_value_and_per_lock(
    redis_backend: RedisBackend, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = await redis_backend.open()
    value = CachedResponse(b"\x00raw\nbody\xff", JSON, T0 + 0.5)
    await store.put(KEY, value, retain_for=30)
    token = await store.try_lock(KEY, hold_for=5)
    assert token is not None

    keys = {key async for key in redis_client.scan_iter(match=f"{key_prefix}*")}
    value_key, lock_key = f"{key_prefix}cache:{KEY}", f"{key_prefix}cache-lock:{KEY}"
    assert keys == {value_key.encode(), lock_key.encode()}
    raw = await redis_client.get(value_key)
    assert raw == f"mc1\n{T0 + 0.5!r}\n{JSON}\n".encode() + value.body  # the body, unchanged
    assert await redis_client.get(lock_key) == token.encode()
    assert 0 < await redis_client.pttl(value_key) <= 30_000
    assert 0 < await redis_client.pttl(lock_key) <= 5_000


@pytest.mark.redis
@pytest.mark.parametrize("raw", [b"", b"garbage", b"mc1\nnot-a-number\ntext/plain\n{}",
                                 b"mc2\n1.0\ntext/plain\n{}", b"mc1\n1.0\n\xff\n{}"])
async def test_an_unreadable_value_is_a_miss(
    redis_backend: RedisBackend, redis_client: redis.asyncio.Redis, key_prefix: str,
    raw: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.stores.market_cache")
    await redis_client.set(f"{key_prefix}cache:{KEY}", raw, px=60_000)
    store = await redis_backend.open()
    assert await store.get(KEY) is None
    assert any("unreadable" in record.getMessage() for record in caplog.records)


async def test_an_unreachable_redis_raises_store_unavailable(unused_tcp_port: int) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}/0")
    store = RedisMarketCacheStore(client, "test:unreachable:")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(KEY),
        lambda: store.put(KEY, TICKER, retain_for=LONG),
        lambda: store.try_lock(KEY, hold_for=LONG),
        lambda: store.unlock(KEY, "token"),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert isinstance(caught.value.__cause__, RedisError | OSError)
    finally:
        await store.close()
        await client.aclose()
