"""The cluster epoch in the real Redis (under the test's prefix) and the audit appends it guards.

Deleting every key under the prefix is what a Redis that came back empty looks like to this
installation; the tests never touch another key.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from gateway.core.audit_chain import AuditEvent, ChainPoint, Kind, Outcome
from gateway.core.cluster_state import Change, ClusterState, LossReport
from gateway.errors import StateLost, StateNotLost
from gateway.services.call_context import CallContext
from gateway.services.state_loss import acknowledge_loss
from gateway.stores.audit import RedisAuditLog
from gateway.stores.cluster_epoch import ClusterEpochStore
from tests.component.conftest import delete_prefixed

pytestmark = pytest.mark.redis
T0 = 1_700_000_000.0
CLI = CallContext(None, "cli-1", "0" * 32, "cli", "test")


def event(number: int) -> AuditEvent:
    return AuditEvent(kind=Kind.OUTCOME, action="place", time=T0 + number, request_id=f"r{number}",
                      trace_id="t", user="demo-trader", token_id=None, account="desk-alpha",
                      client=None, user_agent=None, market="BCCBTC", params={},
                      outcome=Outcome.ACCEPTED)


async def joined(store: ClusterEpochStore) -> ClusterState:
    state = ClusterState()
    view, _ = await store.claim()
    state.observe(view, state.stamp())
    return state


async def test_the_first_claim_makes_the_epoch_and_later_ones_find_it(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = ClusterEpochStore(redis_client, key_prefix)
    first, made = await store.claim()
    again, made_again = await store.claim()
    assert (made, made_again) == (True, False)
    assert first.epoch is not None
    assert again.epoch == first.epoch
    assert not first.acknowledged


async def test_an_append_after_redis_lost_its_data_is_refused_and_stops_the_replica_at_once(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = ClusterEpochStore(redis_client, key_prefix)
    state = await joined(store)
    log = RedisAuditLog(redis_client, key_prefix, state)
    await log.append(event(1))
    assert state.head.seq == 1
    await delete_prefixed(redis_client, key_prefix)
    with pytest.raises(StateLost, match="the cluster epoch in Redis is no longer"):
        await log.append(event(2))
    assert state.status == "lost"
    assert await redis_client.exists(f"{key_prefix}audit:records") == 0


async def test_while_a_loss_is_reported_no_replica_makes_a_new_epoch(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = ClusterEpochStore(redis_client, key_prefix)
    await store.claim()
    await delete_prefixed(redis_client, key_prefix)
    reported = LossReport("e1", ChainPoint(9, "9" * 40), "gone")
    assert await store.report(None, reported)
    assert not await store.report(None, LossReport("e1", ChainPoint(4, "4" * 40), "older"))
    view, made = await store.claim()
    assert (made, view.epoch, view.loss) == (False, None, reported)
    newcomer = ClusterState()
    newcomer.observe(view, newcomer.stamp())
    assert newcomer.status == "lost"


async def test_an_acknowledgement_where_redis_kept_the_last_head_follows_it_in_place(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = ClusterEpochStore(redis_client, key_prefix)
    state = await joined(store)
    log = RedisAuditLog(redis_client, key_prefix, state)
    last = await log.append(event(1))
    state.lose("Redis answered from another address for a while")  # the right one is back
    record = await acknowledge_loss(store, CLI, "the endpoint flapped", lambda: T0, state)
    assert (record.seq, record.prev) == (2, last.hash)
    assert record.event.params["in_place"] == "true"
    assert [r.seq for r in await log.read(0, 10)] == [1, 2]
    assert state.status == "ok"
    with pytest.raises(StateNotLost):
        await acknowledge_loss(store, CLI, "again", lambda: T0, state)


async def test_a_loss_before_the_first_record_is_acknowledged_with_the_chain_starting_at_one(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    store = ClusterEpochStore(redis_client, key_prefix)
    state = await joined(store)
    await delete_prefixed(redis_client, key_prefix)
    assert state.observe(await store.view(), state.stamp()) is Change.LOST
    record = await acknowledge_loss(store, CLI, "emptied before any order", lambda: T0, state)
    assert (record.seq, record.prev, record.event.params["last_seq"]) == (1, "0" * 40, "0")
