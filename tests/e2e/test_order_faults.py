"""The order desk through failures of its own Redis: nothing it owes is lost.

Each test runs a ``redis-server`` of its own (AOF, ``appendfsync always``) and kills it with
SIGKILL while an order is between its audit intent and its outcome, then starts it again on the
same port and directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import RedisSettings
from tests.conftest import StartGateway
from tests.e2e.test_order_desk import (
    PLACE_ROUTE,
    audit_events,
    orders_placed,
    place,
    route_calls,
    start_desk,
    token,
)
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.redis_server import own_redis
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

pytestmark = pytest.mark.redis
EXCHANGE_DELAY_MS = 1500  # long enough to kill Redis while the exchange holds the order
PATIENCE = 20.0  # bounds the waits; it measures nothing


async def ready_body(gateway: RunningGateway) -> Any:
    async with gateway.http.get(gateway.url("/readyz")) as response:
        return await response.json()


async def spools_empty(gateway: RunningGateway) -> bool:
    body = await ready_body(gateway)
    return bool(body["audit_spool"]["pending"] == 0 and body["settlement_spool"]["pending"] == 0)


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
