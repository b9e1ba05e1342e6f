"""The order desk's audit trail end to end, on the real Redis: write-ahead, an outage, a busy run.

The gateway runs in front of the simulator over loopback sockets with its stores in Redis under
the test's key prefix. The trail is read back through ``GET /admin/audit`` or straight from the
Redis audit log, and its hash chain is checked with ``verify_log`` and ``expie-gateway audit
verify``, as an operator would. The simulator's counters prove what reached the exchange.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import yaml

from gateway.app import Overrides
from gateway.auth.users import UserDirectory
from gateway.core.audit_chain import AuditEvent
from gateway.order_settings import AccountLimits, PacingSettings, RatePolicy, UserLimits
from gateway.services.audit_trail import verify_log
from gateway.settings import RedisSettings
from gateway.stores.audit import RedisAuditLog
from gateway.stores.redis_client import connect_redis
from tests.component.conftest import TcpRelay
from tests.conftest import StartGateway
from tests.e2e.test_order_desk import (
    ADMIN,
    ORDERS,
    PLACE_ROUTE,
    audit_events,
    orders_placed,
    route_calls,
    sell,
    trader,
)
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.process_harness import cli
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

PATIENCE = 10.0  # bounds the wait for the spool to reach Redis again; it measures nothing
CLIENTS, ORDERS_EACH = 20, 50
PLENTY = RatePolicy(100_000, 1.0)


async def stored_events(client: redis.asyncio.Redis, prefix: str) -> list[AuditEvent]:
    """Every event in the Redis audit log, in chain order."""
    log = RedisAuditLog(client, prefix)
    events: list[AuditEvent] = []
    while page := await log.read(len(events), 1000):
        events += [record.event for record in page]
    return events


async def place_as(gateway: RunningGateway, request_id: str, body: dict[str, str]) -> Any:
    return await gateway.call("POST", ORDERS, gateway.token(), data=body,
                              headers={"X-Request-Id": request_id})


def cli_verify(directory: Path, redis_url: str, prefix: str) -> dict[str, Any]:
    """``expie-gateway audit verify`` against the gateway's Redis trail (exit status 0)."""
    config = directory / "audit.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": prefix},
        "audit": {"checkpoint_file": str(directory / "audit-checkpoint.json")}}), encoding="utf-8")
    done = cli("audit", "verify", "--config", config)
    assert done.returncode == 0, done.stderr
    verdict: dict[str, Any] = json.loads(done.stdout)
    return verdict


# --- an outage of Redis ------------------------------------------------------------------------


@pytest.mark.redis
async def test_with_redis_stopped_orders_are_refused_unsent_and_no_record_is_lost(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_relay: TcpRelay,
    redis_client: redis.asyncio.Redis, redis_url: str, key_prefix: str, tmp_path: Path,
) -> None:
    gateway = await start_gateway_for(
        sim, redis=RedisSettings(url=redis_relay.url, key_prefix=key_prefix))
    status, body, _ = await place_as(gateway, "before", sell())
    assert status == 200, body
    forwarded = await route_calls(sim)

    await redis_relay.stop()
    status, body, _ = await place_as(gateway, "outage-order", sell())
    assert status == 503, body
    refused_because = body["error"]["code"]
    assert refused_because.endswith("_unavailable")
    status, body, _ = await place_as(gateway, "outage-invalid", {**sell(), "side": "3"})
    assert (status, body["error"]["code"]) == (400, "invalid_order")
    assert await route_calls(sim) == forwarded
    assert await orders_placed(sim) == 1
    await redis_relay.start()

    async def outage_refusals_stored() -> bool:
        requests = {event.request_id for event in await stored_events(redis_client, key_prefix)}
        return {"outage-order", "outage-invalid"} <= requests

    assert await eventually(outage_refusals_stored, PATIENCE)
    status, body, _ = await place_as(gateway, "after", sell())
    assert status == 200, body

    trail = [(event["request_id"], event["kind"], event["reason"], event["outcome"])
             for event in await audit_events(gateway)]
    assert trail == [
        ("before", "intent", None, None), ("before", "outcome", None, "accepted"),
        ("outage-order", "refusal", refused_because, "rejected"),
        ("outage-invalid", "refusal", "invalid_order", "rejected"),
        ("after", "intent", None, None), ("after", "outcome", None, "accepted"),
    ]
    verification = await verify_log(RedisAuditLog(redis_client, key_prefix))
    assert (verification.ok, verification.checked) == (True, 6)
    assert await asyncio.to_thread(cli_verify, tmp_path, redis_url, key_prefix) == {
        "ok": True, "checked": 6, "problem": None, "seq": None, "checkpoint": None,
        "segments": [], "state_loss": None}


@pytest.mark.redis
async def test_an_order_whose_intent_cannot_be_stored_is_refused_and_never_sent(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_relay: TcpRelay,
    redis_client: redis.asyncio.Redis, redis_url: str, key_prefix: str,
) -> None:
    """Only the audit store fails (behind a relay); limits and idempotency keep working."""
    audit_client = connect_redis(redis_relay.url, timeout=1.0)
    try:
        gateway = await start_gateway_for(
            sim, redis=RedisSettings(url=redis_url, key_prefix=key_prefix),
            overrides=Overrides(audit_log=RedisAuditLog(audit_client, key_prefix)))
        status, body, _ = await place_as(gateway, "before", sell())
        assert status == 200, body
        forwarded = await route_calls(sim)

        await redis_relay.stop()
        status, body, _ = await gateway.call(
            "POST", ORDERS, gateway.token(), data=sell(),
            headers={"X-Request-Id": "no-intent", "Idempotency-Key": "retry-me"})
        assert (status, body["error"]["code"]) == (503, "audit_unavailable")
        assert await route_calls(sim) == forwarded
        assert await orders_placed(sim) == 1

        await redis_relay.start()
        # The refused call's key was released: the same request, retried, is a fresh order.
        status, body, _ = await gateway.call(
            "POST", ORDERS, gateway.token(), data=sell(),
            headers={"X-Request-Id": "retried", "Idempotency-Key": "retry-me"})
        assert status == 200, body
        assert await orders_placed(sim) == 2

        async def refusal_stored() -> bool:
            events = await stored_events(redis_client, key_prefix)
            return any(event.request_id == "no-intent" and event.reason == "audit_unavailable"
                       for event in events)

        assert await eventually(refusal_stored, PATIENCE)
        events = await stored_events(redis_client, key_prefix)
        assert not [e for e in events if e.request_id == "no-intent" and e.kind == "intent"]
        assert (await verify_log(RedisAuditLog(redis_client, key_prefix))).ok
    finally:
        await audit_client.aclose()


# --- a busy desk -------------------------------------------------------------------------------


async def client_run(gateway: RunningGateway, number: int) -> list[int]:
    """One client's orders, one after another: buys and sells around 0.1 (many trade)."""
    token = gateway.token(f"client-{number:02d}")
    statuses = []
    for index in range(ORDERS_EACH):
        side = "2" if (number + index) % 2 else "1"
        price = f"0.{98 + (number + 3 * index) % 5:03d}"
        status, _, _ = await gateway.call("POST", ORDERS, token, data={
            "side": side, "amount": str(1 + index % 7), "price": price})
        statuses.append(status)
    return statuses


@pytest.mark.redis
async def test_a_thousand_orders_from_concurrent_clients_are_each_audited_once(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_client: redis.asyncio.Redis,
    redis_url: str, key_prefix: str,
) -> None:
    redis = RedisSettings(url=redis_url, key_prefix=key_prefix)
    settings = gateway_settings(sim, redis)
    settings = dataclasses.replace(settings, orders=dataclasses.replace(
        settings.orders, account_limits=AccountLimits(place=PLENTY, cancel=PLENTY),
        pacing=PacingSettings(rate=100_000.0, burst=10_000, max_wait=5.0)))
    clients = [trader(f"client-{number:02d}", limits=UserLimits(place=PLENTY),
                      account=("desk-alpha", "desk-beta")[number % 2])
               for number in range(CLIENTS)]
    gateway = await start_gateway_for(
        sim, settings=settings, overrides=Overrides(directory=UserDirectory([ADMIN, *clients])))

    runs = await asyncio.gather(*(client_run(gateway, number) for number in range(CLIENTS)))

    statuses = Counter(status for run in runs for status in run)
    events = await stored_events(redis_client, key_prefix)
    intents = [event for event in events if event.kind == "intent"]
    outcomes = [event for event in events if event.kind == "outcome"]
    assert (len(intents), len(outcomes), len(events)) == (1000, 1000, 2000)
    assert Counter(event.intent_id for event in outcomes) == Counter(
        {event.id: 1 for event in intents})
    accepted = [event.order_id for event in outcomes if event.outcome == "accepted"]
    rejected = [event for event in outcomes if event.outcome == "rejected"]
    assert len(accepted) + len(rejected) == 1000
    assert statuses[200] == len(accepted)
    assert await route_calls(sim, PLACE_ROUTE) == 1000
    # The exchange numbers its orders from 1: it holds exactly the accepted ones.
    assert sorted(order_id for order_id in accepted if order_id is not None) == list(
        range(1, await orders_placed(sim) + 1))
    assert len(accepted) == await orders_placed(sim)
    verification = await verify_log(RedisAuditLog(redis_client, key_prefix))
    assert (verification.ok, verification.checked) == (True, 2000)
