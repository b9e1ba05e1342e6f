"""The ownership store contract, run against the memory and the Redis implementation.

A ``Backend`` opens stores over one shared state: for memory that is the one process-wide store,
for Redis a new ``RedisOwnershipStore`` on its own client (the same key prefix) per ``open()``,
i.e. another replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
import redis.asyncio

from gateway.errors import StoreUnavailable
from gateway.stores.ownership import MemoryOwnershipStore, OwnershipStore, RedisOwnershipStore
from gateway.stores.redis_client import connect_redis
from tests.waiting import eventually

NINETY_DAYS = 90 * 86_400.0
PATIENCE = 10.0  # bounds a wait for an expiry to show; it measures nothing


class Backend(Protocol):
    async def open(self) -> OwnershipStore:
        """A store over the shared state (for Redis: another replica)."""


class MemoryBackend:
    def __init__(self) -> None:
        self.store = MemoryOwnershipStore()

    async def open(self) -> OwnershipStore:
        return self.store


class RedisBackend:
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._clients: list[redis.asyncio.Redis] = []

    async def open(self, ttl: float = NINETY_DAYS) -> RedisOwnershipStore:
        client = connect_redis(self.url)
        self._clients.append(client)
        return RedisOwnershipStore(client, self.prefix, ttl)

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


# --- the contract ------------------------------------------------------------------------------


async def test_recorded_orders_have_their_owner_and_others_none(backend: Backend) -> None:
    store = await backend.open()
    await store.record("acct-1", 101, "alice")
    await store.record("acct-1", 102, "bob")
    assert await store.owners("acct-1", [101, 102, 103]) == ["alice", "bob", None]


async def test_owners_follow_the_order_of_the_ids_asked(backend: Backend) -> None:
    store = await backend.open()
    for order_id, user in ((1, "alice"), (2, "bob"), (3, "carol")):
        await store.record("acct-1", order_id, user)
    assert await store.owners("acct-1", [3, 99, 1, 2, 1]) == ["carol", None, "alice", "bob",
                                                               "alice"]


async def test_no_ids_asked_is_no_owners(backend: Backend) -> None:
    store = await backend.open()
    assert await store.owners("acct-1", []) == []


async def test_accounts_are_kept_apart(backend: Backend) -> None:
    store = await backend.open()
    await store.record("acct-1", 7, "alice")
    await store.record("acct:1", 7, "bob")
    assert await store.owners("acct-1", [7]) == ["alice"]
    assert await store.owners("acct:1", [7]) == ["bob"]
    assert await store.owners("acct-2", [7]) == [None]


async def test_every_replica_sees_a_record(backend: Backend) -> None:
    await (await backend.open()).record("acct-1", 7, "alice")
    assert await (await backend.open()).owners("acct-1", [7]) == ["alice"]


async def test_a_later_record_of_an_order_replaces_the_owner(backend: Backend) -> None:
    store = await backend.open()
    await store.record("acct-1", 7, "alice")
    await store.record("acct-1", 7, "bob")
    assert await store.owners("acct-1", [7]) == ["bob"]


# --- memory only: bounded ----------------------------------------------------------------------


async def test_the_memory_store_forgets_the_oldest_records_for_room() -> None:
    store = MemoryOwnershipStore(max_entries=3)
    for order_id in (1, 2, 3):
        await store.record("acct-1", order_id, "alice")
    await store.record("acct-1", 1, "alice")  # rewritten: now the newest
    await store.record("acct-1", 4, "bob")
    assert store.entries == 3
    assert await store.owners("acct-1", [1, 2, 3, 4]) == ["alice", None, "alice", "bob"]


# --- Redis only: expiry and outages ------------------------------------------------------------


@pytest.mark.redis
async def test_redis_forgets_an_owner_after_its_ttl(redis_backend: RedisBackend) -> None:
    store = await redis_backend.open(ttl=0.3)
    await store.record("acct-1", 7, "alice")

    async def forgotten() -> bool:
        return await store.owners("acct-1", [7]) == [None]
    assert await eventually(forgotten, within=PATIENCE)


async def test_an_unreachable_redis_is_store_unavailable(unused_tcp_port: int) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}/0")
    store = RedisOwnershipStore(client, "test:unreachable:", NINETY_DAYS)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.record("acct-1", 7, "alice"),
        lambda: store.owners("acct-1", [7]),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert caught.value.code == "ownership_unavailable"
    finally:
        await client.aclose()


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf")])
async def test_the_redis_ttl_must_be_a_positive_finite_duration(ttl: float) -> None:
    client = connect_redis("redis://127.0.0.1:1/0")  # never used: no I/O before a call
    try:
        with pytest.raises(ValueError, match="ttl"):
            RedisOwnershipStore(client, "unused:", ttl)
    finally:
        await client.aclose()
