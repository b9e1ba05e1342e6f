"""A replica killed (SIGKILL) with orders in flight: another replica settles every one of them.

Two ``expie-gateway serve`` processes share one Redis; the simulator holds each order call for
a while, so replica A dies after the exchange took its places and cancels and before any answer
came back. The clients retry on replica B with the same ``Idempotency-Key``: B's reconciler finds
A's intents without outcome once A's leases and timeouts are past, settles them from the
exchange's own order lists, and every retry then gets the real answer. Nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from tests.desk_processes import (
    BUY,
    Answer,
    Desk,
    DeskFactory,
    order_settings,
    orders_placed,
    pending_ids,
)
from tests.e2e.test_order_desk import CANCEL_ROUTE, PLACE_ROUTE, route_calls
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

PLACES, CANCELS = 6, 4
EXCHANGE_DELAY_MS = 1500  # A is killed while the exchange holds every call
RECOVERY = 30.0  # the target: every unknown resolved within 30 s of the kill
PATIENCE = 20.0  # bounds the other waits; it measures nothing


def fast_reconciling(config: Path) -> None:
    """Short leases, timeouts and reconcile rounds, so one test sees the whole recovery."""
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings["upstream"]["total_timeout"] = 3
    settings["orders"]["idempotency"] = {"lease": 2, "wait": 1}
    settings["orders"]["reconcile"] = {"interval": 0.5, "window": 4, "skew": 1}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def place(desk: Desk, port: int, key: str) -> Answer:
    return await desk.call(port, "POST", "/v1/markets/BCCBTC/orders", "trader-a",
                           data=dict(BUY), headers=keyed(key))


async def cancel(desk: Desk, port: int, order_id: int, key: str) -> Answer:
    return await desk.call(port, "POST", f"/v1/markets/BCCBTC/orders/{order_id}/_cancel",
                           "trader-a", headers=keyed(key))


@pytest.mark.redis
async def test_orders_in_flight_on_a_killed_replica_are_settled_by_another_never_sent_twice(
    sim: RunningSimulator, start_desk: DeskFactory
) -> None:
    desk = await start_desk(order_settings())
    fast_reconciling(desk.config)
    a, b = await desk.start(), await desk.start()
    resting = [await desk.placed_id(a, "trader-a") for _ in range(CANCELS)]
    placed_before = await orders_placed(sim)
    sent_before = await route_calls(sim, PLACE_ROUTE), await route_calls(sim, CANCEL_ROUTE)

    await sim.set_faults(latency_ms=EXCHANGE_DELAY_MS)
    in_flight = [asyncio.create_task(place(desk, a, f"place-{i}")) for i in range(PLACES)]
    in_flight += [asyncio.create_task(cancel(desk, a, order_id, f"cancel-{order_id}"))
                  for order_id in resting]

    async def all_at_the_exchange() -> bool:
        return (await route_calls(sim, PLACE_ROUTE) - sent_before[0] == PLACES
                and await route_calls(sim, CANCEL_ROUTE) - sent_before[1] == CANCELS)
    assert await eventually(all_at_the_exchange, within=PATIENCE)
    desk.processes[a].kill()
    killed_at = time.monotonic()
    desk.processes[a].wait(timeout=10)
    lost = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(answer, Exception) for answer in lost)  # no client got an answer
    await sim.set_faults(latency_ms=0)

    retries = {f"place-{i}": 0 for i in range(PLACES)} | {
        f"cancel-{order_id}": order_id for order_id in resting}
    answers: dict[str, Answer] = {}

    async def every_retry_answered() -> bool:
        for key, order_id in retries.items():
            if key in answers:
                continue
            answer = await (place(desk, b, key) if order_id == 0
                            else cancel(desk, b, order_id, key))
            if answer.status == 200 and answer.headers.get("Idempotent-Replayed") == "true":
                answers[key] = answer
            else:  # still in flight, then unknown, until B has reconciled it
                assert (answer.status, answer.code) in {
                    (409, "idempotency_in_progress"), (409, "idempotency_outcome_unknown")
                }, answer.body
        await asyncio.sleep(0.2)
        return len(answers) == len(retries)
    assert await eventually(every_retry_answered, within=RECOVERY)
    assert time.monotonic() - killed_at < RECOVERY

    assert await orders_placed(sim) - placed_before == PLACES  # each place reached it once
    assert await route_calls(sim, PLACE_ROUTE) - sent_before[0] == PLACES
    assert await route_calls(sim, CANCEL_ROUTE) - sent_before[1] == CANCELS
    placed_ids = {answers[f"place-{i}"].body["id"] for i in range(PLACES)}
    assert len(placed_ids) == PLACES  # six orders, each attributed to one call
    assert placed_ids <= await pending_ids(sim, "desk-alpha")
    assert not set(resting) & await pending_ids(sim, "desk-alpha")
    assert [answers[f"cancel-{order_id}"].body["id"] for order_id in resting] == resting

    reconciled = await desk.audit(b, kind="outcome", outcome="reconciled")
    assert len(reconciled) == PLACES + CANCELS
    assert sorted(record["event"]["order_id"] for record in reconciled) == sorted(
        [*placed_ids, *resting])
    intents = await desk.audit(b, kind="intent")
    outcomes = await desk.audit(b, kind="outcome")
    assert sorted(record["event"]["id"] for record in intents) == sorted(
        record["event"]["intent_id"] for record in outcomes)  # each intent, one outcome
    mine = next(iter(placed_ids))
    assert (await cancel(desk, b, mine, "after")).status == 200  # the reconciled owner
