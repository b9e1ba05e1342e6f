"""The order desk through failures: nothing it owes is lost, nothing is sent twice.

A Redis failure between an order's audit intent and its outcome (a ``redis-server`` of the
test's own, AOF with ``appendfsync always``, killed with SIGKILL and started again on the same
port and directory); an exchange that times out or answers 500, whose outcome the reconciler
then settles from the exchange's own order lists.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.order_settings import ReconcileSettings
from gateway.settings import RedisSettings, Settings
from tests.conftest import StartGateway
from tests.e2e.test_order_desk import (
    PLACE_ROUTE,
    Answer,
    audit_events,
    orders_placed,
    place,
    route_calls,
    start_desk,
    token,
)
from tests.e2e.test_upstream_resilience import metric
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.redis_server import own_redis
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

EXCHANGE_DELAY_MS = 1500  # long enough to kill Redis while the exchange holds the order
PATIENCE = 20.0  # bounds the waits; it measures nothing


async def ready_body(gateway: RunningGateway) -> Any:
    async with gateway.http.get(gateway.url("/readyz")) as response:
        return await response.json()


async def spools_empty(gateway: RunningGateway) -> bool:
    body = await ready_body(gateway)
    return bool(body["audit_spool"]["pending"] == 0 and body["settlement_spool"]["pending"] == 0)


@pytest.mark.redis
async def test_redis_lost_between_intent_and_outcome_delays_the_settlement_never_drops_it(
    sim: RunningSimulator, start_gateway_for: StartGateway, tmp_path: Path
) -> None:
    with own_redis(tmp_path) as server:
        redis_settings = RedisSettings(url=server.url, key_prefix="faults:")
        settings = gateway_settings(sim, redis_settings)
        settings = dataclasses.replace(settings, audit=dataclasses.replace(
            settings.audit, spool_retry_interval=0.1))
        gateway = await start_desk(sim, start_gateway_for, redis_settings, settings=settings)
        status, _, _ = await place(gateway)  # fills the markets cache while all is well
        assert status == 200
        sent_before = await route_calls(sim)
        await sim.set_faults(latency_ms=EXCHANGE_DELAY_MS)
        placing = asyncio.create_task(place(gateway, key="through-the-outage"))

        async def at_the_exchange() -> bool:
            return await route_calls(sim) > sent_before
        assert await eventually(at_the_exchange, within=PATIENCE)
        server.kill()  # the intent is stored; the outcome, the key and the owner are not yet
        status, order, _ = await placing
        assert status == 200, order
        body = await ready_body(gateway)
        assert body["settlement_spool"]["pending"] == 2  # the key's answer and the owner
        await sim.set_faults(latency_ms=0)
        server.start()
        assert await eventually(lambda: spools_empty(gateway), within=PATIENCE)

        status, again, headers = await place(gateway, key="through-the-outage")
        assert (status, again["id"], headers["Idempotent-Replayed"]) == (200, order["id"], "true")
        status, cancelled, _ = await gateway.call(
            "POST", f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel",
            token(gateway, "demo-trader"))
        assert (status, cancelled["id"]) == (200, order["id"])  # the owner was remembered
        assert await orders_placed(sim) == 2
        assert await route_calls(sim, PLACE_ROUTE) == sent_before + 1
        intents = [event for event in await audit_events(gateway, kind="intent")
                   if event["idempotency_key"] == "through-the-outage"]
        outcomes = await audit_events(gateway, kind="outcome", action="place")
        assert [event["intent_id"] for event in outcomes
                if event["intent_id"] == intents[0]["id"]] == [intents[0]["id"]]
        assert [event["order_id"] for event in outcomes
                if event["intent_id"] == intents[0]["id"]] == [order["id"]]


# --- unknown outcomes, reconciled from the exchange's own state ---------------------------------


def reconciling_settings(sim: RunningSimulator) -> Settings:
    """Short timeouts and a quick reconciler, so a test sees a whole reconciliation."""
    settings = gateway_settings(sim)
    orders = settings.orders
    return dataclasses.replace(
        settings,
        upstream=dataclasses.replace(settings.upstream, total_timeout=0.3, retries=0),
        orders=dataclasses.replace(
            orders,
            idempotency=dataclasses.replace(orders.idempotency, wait=0.2, lease=1.0),
            reconcile=ReconcileSettings(interval=0.1, max_tries=5, window=1.5, skew=0.5)))


async def replayed(gateway: RunningGateway, key: str, status: int) -> Answer:
    """The replay of ``key`` once it answers ``status`` as a replay (bounded wait)."""
    answers: list[Answer] = []

    async def settled() -> bool:
        answers.append(await place(gateway, key=key))
        done = answers[-1][0] == status and answers[-1][2].get("Idempotent-Replayed") == "true"
        if not done:
            await asyncio.sleep(0.1)
        return done
    assert await eventually(settled, within=PATIENCE), answers[-1]
    return answers[-1]


async def reconciled(gateway: RunningGateway) -> list[dict[str, Any]]:
    return await audit_events(gateway, kind="outcome", outcome="reconciled")


async def test_a_timed_out_order_the_exchange_placed_is_reconciled_as_placed(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await start_desk(sim, start_gateway_for, None, settings=reconciling_settings(sim))
    assert (await place(gateway))[0] == 200  # the markets cache, filled while all is well
    await sim.set_faults(latency_ms=600)  # the exchange acts after the gateway gave up
    status, body, _ = await place(gateway, key="slow")
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    await sim.set_faults(latency_ms=0)
    status, order, _ = await replayed(gateway, "slow", 200)
    assert order["amount"] == "1"
    assert await orders_placed(sim) == 2  # the first order and this one: never sent twice
    [outcome] = await reconciled(gateway)
    assert (outcome["reason"], outcome["order_id"]) == ("placed", order["id"])
    status, cancelled, _ = await gateway.call(
        "POST", f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel",
        token(gateway, "demo-trader"))
    assert status == 200, cancelled  # the reconciled order has its owner


async def test_an_order_the_exchange_failed_with_a_500_is_reconciled_as_not_placed(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await start_desk(sim, start_gateway_for, None, settings=reconciling_settings(sim))
    assert (await place(gateway))[0] == 200
    await sim.set_faults(error_rate=1.0, error_status=500)
    status, _, _ = await place(gateway, key="failed")
    assert status == 500  # the exchange's own answer, passed through: it may have acted
    await sim.set_faults(error_rate=0.0)
    status, body, _ = await replayed(gateway, "failed", 409)
    assert body["error"]["code"] == "order_not_placed"
    assert await orders_placed(sim) == 1
    [outcome] = await reconciled(gateway)
    assert (outcome["reason"], outcome["order_id"]) == ("not_placed", None)


async def test_a_timed_out_cancel_is_reconciled_from_the_order_it_ended(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await start_desk(sim, start_gateway_for, None, settings=reconciling_settings(sim))
    status, order, _ = await place(gateway)
    assert status == 200
    await sim.set_faults(latency_ms=600)
    cancel = f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel"
    status, body, _ = await gateway.call("POST", cancel, token(gateway, "demo-trader"),
                                         headers={"Idempotency-Key": "slow-cancel"})
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    await sim.set_faults(latency_ms=0)
    answers: list[Answer] = []

    async def settled() -> bool:
        answers.append(await gateway.call("POST", cancel, token(gateway, "demo-trader"),
                                          headers={"Idempotency-Key": "slow-cancel"}))
        await asyncio.sleep(0.1)
        return answers[-1][0] == 200
    assert await eventually(settled, within=PATIENCE), answers[-1]
    assert answers[-1][1]["id"] == order["id"]
    [outcome] = await reconciled(gateway)
    assert (outcome["action"], outcome["reason"]) == ("cancel", "cancelled")


async def test_a_call_the_exchange_never_lets_us_check_is_recorded_unresolved_and_counted(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await start_desk(sim, start_gateway_for, None, settings=reconciling_settings(sim))
    assert (await place(gateway))[0] == 200
    await sim.set_faults(latency_ms=600)
    status, _, _ = await place(gateway, key="unchecked")
    assert status == 504
    await sim.set_faults(latency_ms=0, error_rate=1.0, error_status=500)  # lists unreadable

    async def given_up() -> bool:
        return bool(await audit_events(gateway, kind="outcome", outcome="unresolved"))
    assert await eventually(given_up, within=PATIENCE)
    [outcome] = await audit_events(gateway, kind="outcome", outcome="unresolved")
    [intent] = [event for event in await audit_events(gateway, kind="intent")
                if event["idempotency_key"] == "unchecked"]
    assert outcome["intent_id"] == intent["id"]
    assert await metric(
        gateway, 'expie_gateway_orders_reconciled_total{action="place",verdict="unresolved"}'
    ) == 1
    await sim.set_faults(error_rate=0.0)
    status, body, _ = await place(gateway, key="unchecked")  # a human decides, not a replay
    assert (status, body["error"]["code"]) == (409, "idempotency_outcome_unknown")
    assert await reconciled(gateway) == []
