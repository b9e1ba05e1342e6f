"""The idempotency store contract, run against the memory and the Redis implementation.

A ``Backend`` opens stores over one shared state: for memory that is the one process-wide store,
for Redis a new ``RedisIdempotencyStore`` on its own client (the same key prefix) per ``open()``,
i.e. another replica. Expiry is driven by ``let_pass``: memory advances a fake clock; Redis sleeps
in real time, so expiries there use a short ttl and a bounded wait (``patience``), never a
timing assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
import redis.asyncio

from gateway.errors import StoreUnavailable
from gateway.stores.idempotency import (
    Claim,
    ClaimState,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
)
from gateway.stores.rate_limits import Limit, LimitCheck, MemoryRateLimitStore
from gateway.stores.redis_client import connect_redis
from tests.clock import FakeClock
from tests.waiting import eventually

DAY = 86_400.0
SHORT = 0.3  # a ttl that Redis lets run out in real time
PATIENCE = 10.0  # bounds a wait for an expiry to show; it measures nothing
FP = "sha256:aaaa"
OTHER_FP = "sha256:bbbb"
PLACED = StoredResponse(201, b'{"result":{"id":42,"price":"0.10"}}', "application/json")


class Backend(Protocol):
    patience: float

    async def open(self) -> IdempotencyStore:
        """A store over the shared state (for Redis: another replica)."""

    async def let_pass(self, seconds: float) -> None:
        """Let ``seconds`` pass for the store's expiry decisions."""


class MemoryBackend:
    patience = 0.0  # the fake clock decides: waiting in real time changes nothing

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryIdempotencyStore(self.clock, limits=MemoryRateLimitStore(self.clock))

    async def open(self) -> IdempotencyStore:
        return self.store

    async def let_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)


class RedisBackend:
    patience = PATIENCE

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._clients: list[redis.asyncio.Redis] = []

    async def open(self) -> RedisIdempotencyStore:
        client = connect_redis(self.url)
        self._clients.append(client)
        return RedisIdempotencyStore(client, self.prefix)

    async def let_pass(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # real time; callers still wait with ``eventually``

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


def claims_new(
    store: IdempotencyStore, user: str, key: str, ttl: float = DAY
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await store.claim(user, key, FP, ttl)).state is ClaimState.NEW
    return check


# --- the contract ------------------------------------------------------------------------------


async def test_the_first_request_is_new_and_a_repeat_replays_its_response(
    backend: Backend,
) -> None:
    store = await backend.open()
    assert await store.claim("alice", "k-1", FP, DAY) == Claim(ClaimState.NEW)
    await store.complete("alice", "k-1", PLACED, DAY)
    for view in (store, await backend.open()):  # this replica and another one
        replay = await view.claim("alice", "k-1", FP, DAY)
        assert replay == Claim(ClaimState.REPLAY, response=PLACED)


async def test_a_replay_keeps_a_missing_content_type_and_an_empty_body(backend: Backend) -> None:
    store = await backend.open()
    bare = StoredResponse(204, b"", None)
    await store.claim("alice", "k-1", FP, DAY)
    await store.complete("alice", "k-1", bare, DAY)
    assert (await store.claim("alice", "k-1", FP, DAY)).response == bare


async def test_a_replay_keeps_binary_bodies_byte_for_byte(backend: Backend) -> None:
    store = await backend.open()
    odd = StoredResponse(502, bytes(range(256)) + b"\r\n\x00", "application/octet-stream")
    await store.claim("alice", "k-1", FP, DAY)
    await store.complete("alice", "k-1", odd, DAY)
    assert (await (await backend.open()).claim("alice", "k-1", FP, DAY)).response == odd


async def test_the_same_key_with_another_body_is_a_conflict(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    assert (await store.claim("alice", "k-1", OTHER_FP, DAY)).state is ClaimState.CONFLICT
    await store.complete("alice", "k-1", PLACED, DAY)
    assert await store.claim("alice", "k-1", OTHER_FP, DAY) == Claim(ClaimState.CONFLICT)


async def test_a_duplicate_of_a_running_request_is_told_it_is_in_flight(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    assert await store.claim("alice", "k-1", FP, DAY) == Claim(ClaimState.IN_FLIGHT)
    assert (await (await backend.open()).claim("alice", "k-1", FP, DAY)).state is (
        ClaimState.IN_FLIGHT)


async def test_a_released_claim_makes_the_retry_fresh(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    await store.release("alice", "k-1")
    assert (await store.claim("alice", "k-1", OTHER_FP, DAY)).state is ClaimState.NEW


async def test_release_never_erases_an_answer(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    await store.complete("alice", "k-1", PLACED, DAY)
    await store.release("alice", "k-1")
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.REPLAY


async def test_an_unknown_outcome_is_replayed_as_unknown_with_the_audit_reference(
    backend: Backend,
) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    await store.mark_unknown("alice", "k-1", "audit:000123", DAY)
    claim = await (await backend.open()).claim("alice", "k-1", FP, DAY)
    assert claim == Claim(ClaimState.UNKNOWN, audit_ref="audit:000123")
    assert (await store.claim("alice", "k-1", OTHER_FP, DAY)).state is ClaimState.CONFLICT


async def test_keys_belong_to_one_user(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY)
    await store.complete("alice", "k-1", PLACED, DAY)
    assert (await store.claim("bob", "k-1", OTHER_FP, DAY)).state is ClaimState.NEW
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.REPLAY


@pytest.mark.parametrize(("first", "second"), [
    (("a:b", "c"), ("a", "b:c")),
    (("a", "1:b"), ("a:1", "b")),
    (("", "a:b"), ("a", "b")),
])
async def test_colons_in_users_and_keys_never_make_two_keys_one(
    backend: Backend, first: tuple[str, str], second: tuple[str, str]
) -> None:
    store = await backend.open()
    await store.claim(*first, FP, DAY)
    await store.complete(*first, PLACED, DAY)
    assert (await store.claim(*second, OTHER_FP, DAY)).state is ClaimState.NEW


async def test_a_key_is_forgotten_after_its_ttl(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, SHORT)
    await store.complete("alice", "k-1", PLACED, SHORT)
    await backend.let_pass(2 * SHORT)
    assert await eventually(claims_new(store, "alice", "k-1"), within=backend.patience)


async def test_completing_renews_the_ttl(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, SHORT)
    await store.complete("alice", "k-1", PLACED, DAY)
    await backend.let_pass(2 * SHORT)
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.REPLAY


async def test_of_fifty_concurrent_duplicates_exactly_one_is_new(backend: Backend) -> None:
    stores = [await backend.open(), await backend.open()]  # for Redis: two replicas
    claims = await asyncio.gather(*(
        stores[i % 2].claim("alice", "k-1", FP, DAY) for i in range(50)))
    states = [claim.state for claim in claims]
    assert states.count(ClaimState.NEW) == 1
    assert states.count(ClaimState.IN_FLIGHT) == 49


async def test_completing_a_forgotten_claim_stores_nothing(backend: Backend) -> None:
    store = await backend.open()
    await store.complete("alice", "never-claimed", PLACED, DAY)
    await store.mark_unknown("alice", "never-claimed-2", "audit:1", DAY)
    assert (await store.claim("alice", "never-claimed", FP, DAY)).state is ClaimState.NEW
    assert (await store.claim("alice", "never-claimed-2", FP, DAY)).state is ClaimState.NEW


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan")])
async def test_a_ttl_must_be_a_positive_finite_duration(backend: Backend, ttl: float) -> None:
    store = await backend.open()
    with pytest.raises(ValueError, match="ttl"):
        await store.claim("alice", "k-1", FP, ttl)


# --- leases: an in-flight claim holds only while its claimant lives ------------------------------


async def test_a_lapsed_lease_makes_the_key_unknown_pointing_at_its_intent(
    backend: Backend,
) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY, lease=SHORT, intent_ref="intent-7")
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.IN_FLIGHT
    await backend.let_pass(2 * SHORT)

    async def unknown() -> bool:
        claim = await (await backend.open()).claim("alice", "k-1", FP, DAY)
        return claim == Claim(ClaimState.UNKNOWN, audit_ref="intent-7")
    assert await eventually(unknown, within=backend.patience)


async def test_a_renewed_lease_keeps_the_claim_in_flight(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY, lease=2 * SHORT, intent_ref="intent-7")
    await backend.let_pass(SHORT)
    await store.renew("alice", "k-1", DAY)
    await backend.let_pass(3 * SHORT)
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.IN_FLIGHT


async def test_a_late_answer_replaces_an_unknown_from_a_lapsed_lease(backend: Backend) -> None:
    store = await backend.open()
    await store.claim("alice", "k-1", FP, DAY, lease=SHORT, intent_ref="intent-7")
    await backend.let_pass(2 * SHORT)
    await eventually(lambda: _state_is(store, ClaimState.UNKNOWN), within=backend.patience)
    await store.complete("alice", "k-1", PLACED, DAY)
    assert await store.claim("alice", "k-1", FP, DAY) == Claim(ClaimState.REPLAY,
                                                               response=PLACED)


async def _state_is(store: IdempotencyStore, state: ClaimState) -> bool:
    return (await store.claim("alice", "k-1", FP, DAY)).state is state


# --- claims that decide the rate limits ---------------------------------------------------------

TWO_PER_DAY = (LimitCheck("user:alice:place", Limit(2, DAY)),)


async def test_a_claim_spends_the_limits_and_a_replay_spends_nothing(backend: Backend) -> None:
    store = await backend.open()
    first = await store.claim("alice", "k-1", FP, DAY, checks=TWO_PER_DAY)
    assert first.state is ClaimState.NEW
    assert first.decision is not None
    assert first.decision.remaining == 1
    await store.complete("alice", "k-1", PLACED, DAY)
    for _ in range(5):
        replay = await store.claim("alice", "k-1", FP, DAY, checks=TWO_PER_DAY)
        assert (replay.state, replay.decision) == (ClaimState.REPLAY, None)
    second = await store.claim("alice", "k-2", FP, DAY, checks=TWO_PER_DAY)
    assert second.state is ClaimState.NEW
    assert second.decision is not None
    assert second.decision.remaining == 0


async def test_a_key_refused_by_its_limit_is_not_held(backend: Backend) -> None:
    store = await backend.open()
    one = (LimitCheck("user:alice:place", Limit(1, DAY)),)
    await store.claim("alice", "k-1", FP, DAY, checks=one)
    refused = await store.claim("alice", "k-2", FP, DAY, checks=one)
    assert refused.state is ClaimState.ABSENT
    assert refused.decision is not None
    assert not refused.decision.allowed
    assert (await store.claim("alice", "k-2", OTHER_FP, DAY)).state is ClaimState.NEW


async def test_an_unscreened_claim_holds_nothing_but_still_sees_a_held_key(
    backend: Backend,
) -> None:
    store = await backend.open()
    assert (await store.claim("alice", "k-1", FP, DAY, checks=TWO_PER_DAY,
                              screened=False)).state is ClaimState.ABSENT
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.NEW
    await store.complete("alice", "k-1", PLACED, DAY)
    held = await store.claim("alice", "k-1", FP, DAY, screened=False)
    assert held == Claim(ClaimState.REPLAY, response=PLACED)
    fresh = await store.claim("alice", "k-2", FP, DAY, checks=TWO_PER_DAY)
    assert fresh.decision is not None
    assert fresh.decision.remaining == 1


# --- memory only: bounded ----------------------------------------------------------------------


async def test_the_memory_store_forgets_the_oldest_keys_for_room() -> None:
    store = MemoryIdempotencyStore(FakeClock(), max_entries=3)
    for key in ("k-1", "k-2", "k-3", "k-4"):
        await store.claim("alice", key, FP, DAY)
    assert store.entries == 3
    assert (await store.claim("alice", "k-4", FP, DAY)).state is ClaimState.IN_FLIGHT
    assert (await store.claim("alice", "k-1", FP, DAY)).state is ClaimState.NEW


# --- Redis only: outages -----------------------------------------------------------------------


async def test_an_unreachable_redis_is_store_unavailable(unused_tcp_port: int) -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_tcp_port}/0")
    store = RedisIdempotencyStore(client, "test:unreachable:")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.claim("alice", "k-1", FP, DAY),
        lambda: store.complete("alice", "k-1", PLACED, DAY),
        lambda: store.mark_unknown("alice", "k-1", "audit:1", DAY),
        lambda: store.release("alice", "k-1"),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert caught.value.code == "idempotency_unavailable"
    finally:
        await client.aclose()
