"""The revocation store contract, run against the memory and the Redis implementation.

A ``Backend`` opens stores over one shared state: for memory that is the one process-wide store,
for Redis a new ``RedisRevocationStore`` (its own client, the same key prefix) per ``open()``, i.e.
another replica. The memory runs need no Redis. Time is a fake wall clock for expiry decisions;
the Redis sync itself runs on real time (``sync_interval`` 0.1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, cast

import pytest
import redis.asyncio

from gateway.errors import StoreUnavailable
from gateway.stores.redis_client import connect_redis
from gateway.stores.revocation import (
    MemoryRevocationStore,
    RedisRevocationStore,
    RevocationStore,
)
from tests.clock import FakeClock
from tests.component.conftest import TcpRelay
from tests.waiting import eventually

Store = MemoryRevocationStore | RedisRevocationStore
T0 = 1_700_000_000.0
HOUR = 3600.0
SYNC = 0.1
# How long a background effect other than the one-second requirement may take: generous, since
# it bounds a wait, it does not measure anything.
PATIENCE = 10.0




class Backend(Protocol):
    async def open(self) -> Store:
        """A started store over the shared state."""

    async def stored(self) -> int:
        """How many revocations the shared state holds."""


class MemoryBackend:
    def __init__(self, clock: FakeClock) -> None:
        self.store = MemoryRevocationStore(clock)

    async def open(self) -> Store:
        return self.store

    async def stored(self) -> int:
        return self.store.entries


class RedisBackend:
    def __init__(self, url: str, client: redis.asyncio.Redis, prefix: str, clock: FakeClock):
        self.url, self.client, self.prefix, self.clock = url, client, prefix, clock
        self._opened: list[tuple[RedisRevocationStore, redis.asyncio.Redis]] = []

    async def open(self, url: str | None = None) -> RedisRevocationStore:
        client = connect_redis(url or self.url)
        store = RedisRevocationStore(client, self.prefix, self.clock, sync_interval=SYNC)
        self._opened.append((store, client))
        await store.start()
        return store

    async def stored(self) -> int:
        async with self.client.pipeline(transaction=True) as pipe:  # one consistent view
            for name in ("tokens", "users", "users:keep_until"):
                pipe.zcard(f"{self.prefix}revoked:{name}")
            tokens, users, keep = await pipe.execute()
        assert users == keep
        return int(tokens) + int(users)

    async def aclose(self) -> None:
        for store, client in self._opened:
            await store.close()
            await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_backend(
    redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str, clock: FakeClock
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, redis_client, key_prefix, clock)
    yield backend
    await backend.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Backend:
    """Each contract test runs on both; only the Redis run asks for the Redis fixtures."""
    if request.param == "memory":
        return MemoryBackend(clock)
    redis_backend: RedisBackend = request.getfixturevalue("redis_backend")
    return redis_backend




def revoked(
    store: Store, token_id: str, subject: str = "alice", issued_at: float = T0 - 60
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return store.is_revoked(token_id, subject, issued_at)
    return check


# --- the contract ------------------------------------------------------------------------------


async def test_a_revoked_token_is_refused_and_no_other(backend: Backend) -> None:
    store = await backend.open()
    await store.revoke_token("jti-1", T0 + HOUR)
    assert store.is_revoked("jti-1", "alice", T0 - 60)
    assert not store.is_revoked("jti-2", "alice", T0 - 60)
    assert not store.is_revoked("jti-2", "bob", T0 - 60)


async def test_a_revoked_user_loses_the_tokens_issued_before_the_cutoff(backend: Backend) -> None:
    store = await backend.open()
    await store.revoke_user("alice", before=T0, keep_until=T0 + HOUR)
    assert store.is_revoked("old", "alice", T0 - 1)
    assert not store.is_revoked("new", "alice", T0)
    assert not store.is_revoked("new", "alice", T0 + 1)
    assert not store.is_revoked("old", "bob", T0 - 1)


async def test_the_user_cutoff_moves_forward_never_back(backend: Backend) -> None:
    store = await backend.open()
    await store.revoke_user("alice", before=T0, keep_until=T0 + HOUR)
    await store.revoke_user("alice", before=T0 + 100, keep_until=T0 + HOUR + 100)
    await store.revoke_user("alice", before=T0 - 100, keep_until=T0 + HOUR - 100)
    for view in (store, await backend.open()):  # what this store holds, and the shared truth
        assert view.is_revoked("a", "alice", T0 + 50)
        assert not view.is_revoked("b", "alice", T0 + 100)


async def test_a_token_revoked_twice_keeps_the_later_expiry(
    backend: Backend, clock: FakeClock
) -> None:
    store = await backend.open()
    await store.revoke_token("jti-1", T0 + 2 * HOUR)
    await store.revoke_token("jti-1", T0 + HOUR)
    clock.advance(1.5 * HOUR)
    assert store.is_revoked("jti-1", "alice", T0)
    assert (await backend.open()).is_revoked("jti-1", "alice", T0)


async def test_revocations_are_forgotten_when_the_tokens_would_have_expired(
    backend: Backend, clock: FakeClock
) -> None:
    store = await backend.open()
    await store.revoke_token("short", T0 + 60)
    await store.revoke_user("alice", before=T0, keep_until=T0 + 120)
    await store.revoke_token("long", T0 + HOUR)
    assert await backend.stored() == 3

    clock.advance(60)
    assert not store.is_revoked("short", "bob", T0 - 60)
    assert store.is_revoked("any", "alice", T0 - 60)
    clock.advance(60)
    assert not store.is_revoked("any", "alice", T0 - 60)
    assert store.is_revoked("long", "bob", T0 - 60)

    await store.revoke_token("later", T0 + HOUR)  # a change purges what has expired
    assert store.entries == 2
    assert await backend.stored() == 2


async def test_a_store_opened_later_loads_earlier_revocations(backend: Backend) -> None:
    first = await backend.open()
    await first.revoke_token("jti-1", T0 + HOUR)
    await first.revoke_user("alice", before=T0, keep_until=T0 + HOUR)
    second = await backend.open()
    assert second.is_revoked("jti-1", "bob", T0)
    assert second.is_revoked("other", "alice", T0 - 1)


async def test_a_working_store_is_healthy_and_checks_without_io(backend: Backend) -> None:
    store = await backend.open()
    await store.revoke_token("jti-1", T0 + HOUR)
    assert store.healthy
    assert not inspect.iscoroutinefunction(store.is_revoked)
    protocol_view: RevocationStore = store
    assert protocol_view.is_revoked("jti-1", "alice", T0) is True


# --- Redis only: replicas, purging, outages ----------------------------------------------------


@pytest.mark.redis
async def test_a_second_replica_refuses_within_one_second(redis_backend: RedisBackend) -> None:
    first, second = await redis_backend.open(), await redis_backend.open()
    cases: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[bool]]]] = [
        (lambda: first.revoke_token("jti-1", T0 + HOUR), revoked(second, "jti-1", "bob")),
        (lambda: first.revoke_user("alice", T0, T0 + HOUR),
         revoked(second, "other", "alice", T0 - 1)),
    ]
    for revoke, check in cases:
        assert not await check()
        deadline = asyncio.get_running_loop().time() + 1.0
        await revoke()
        # The requirement: every replica refuses the token within one second.
        remaining = deadline - asyncio.get_running_loop().time()
        assert await eventually(check, within=remaining)


@pytest.mark.redis
async def test_the_sync_purges_expired_entries_from_redis(
    redis_backend: RedisBackend, clock: FakeClock
) -> None:
    first, second = await redis_backend.open(), await redis_backend.open()
    await first.revoke_token("jti-1", T0 + 60)
    await first.revoke_user("alice", before=T0, keep_until=T0 + 60)
    assert await eventually(revoked(second, "jti-1"), within=PATIENCE)
    clock.advance(61)

    async def purged() -> bool:
        return await redis_backend.stored() == 0 and first.entries == second.entries == 0
    assert await eventually(purged, within=PATIENCE)


async def test_an_unreachable_redis_refuses_changes_and_reports_unhealthy(
    unused_tcp_port: int, clock: FakeClock
) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}/0")
    store = RedisRevocationStore(client, "test:unreachable:", clock, sync_interval=SYNC)
    try:
        await store.start()  # does not raise: it keeps retrying in the background
        assert not store.healthy
        with pytest.raises(StoreUnavailable):
            await store.revoke_token("jti-1", T0 + HOUR)
        with pytest.raises(StoreUnavailable):
            await store.revoke_user("alice", T0, T0 + HOUR)
        assert not store.is_revoked("jti-1", "alice", T0 - 1)
        assert not store.healthy
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.redis
async def test_an_outage_keeps_the_mirror_and_recovery_catches_up(
    redis_backend: RedisBackend, redis_relay: TcpRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.stores.revocation")
    direct = await redis_backend.open()
    relayed = await redis_backend.open(redis_relay.url)
    await relayed.revoke_token("before-outage", T0 + HOUR)

    await redis_relay.stop()

    async def unhealthy() -> bool:
        return not relayed.healthy
    assert await eventually(unhealthy, within=PATIENCE)
    assert relayed.is_revoked("before-outage", "alice", T0)
    with pytest.raises(StoreUnavailable):
        await relayed.revoke_token("during-outage", T0 + HOUR)
    await direct.revoke_token("elsewhere", T0 + HOUR)
    assert not relayed.is_revoked("during-outage", "alice", T0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage, however many retries fail

    await redis_relay.start()

    async def caught_up() -> bool:
        return relayed.healthy and relayed.is_revoked("elsewhere", "alice", T0)
    assert await eventually(caught_up, within=PATIENCE)
    assert relayed.is_revoked("before-outage", "alice", T0)


class SwallowingRedis:
    """Stands in for a redis-py client that, as on Python 3.11 at times, swallows a cancel."""

    def __init__(self) -> None:
        self.in_get = asyncio.Event()
        self.gets = 0

    def register_script(self, text: str) -> Callable[..., Awaitable[object]]:
        async def snapshot(keys: list[str], args: list[str]) -> object:
            return [b"0", [], [], []]
        return snapshot

    async def get(self, key: str) -> bytes:
        self.gets += 1
        if self.gets > 1:  # the first GET is start()'s; later ones are the sync task's
            self.in_get.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(PATIENCE)
        return b"0"


async def test_close_ends_the_sync_even_when_the_client_swallows_the_cancel() -> None:
    client = SwallowingRedis()
    store = RedisRevocationStore(cast(redis.asyncio.Redis, client), "unused:", sync_interval=SYNC)
    await store.start()
    await asyncio.wait_for(client.in_get.wait(), PATIENCE)
    await asyncio.wait_for(store.close(), PATIENCE)
