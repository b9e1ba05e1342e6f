"""The order desk on two ``expie-gateway serve`` processes sharing one Redis.

Replicas in separate OS processes share nothing but Redis: a place limit holds exactly however a
burst spreads over them, a kill switch set on one stops the other within a second (and outlives
both), cancelling what a switch covers reaches orders placed anywhere, and the one audit chain
they both append to verifies and exports whole from the command line.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import pytest

from tests.desk_processes import (
    Answer,
    Desk,
    DeskFactory,
    order_settings,
    orders_placed,
    pending_ids,
    two_replicas,
)
from tests.process_harness import cli
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

WITHIN = 1.0  # seconds a kill switch change may take to reach the other replica


def order_ids(records: list[dict[str, Any]]) -> list[int]:
    return sorted(int(record["event"]["params"]["order_id"]) for record in records)


async def assert_audit_exports_whole(desk: Desk, port: int) -> None:
    """``audit verify`` accepts the chain and ``audit export`` writes every record it holds."""
    records = await desk.audit(port)
    verified = await asyncio.to_thread(cli, "audit", "verify", "--config", desk.config)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout) == {
        "ok": True, "checked": len(records), "problem": None, "seq": None, "checkpoint": None,
        "segments": [], "state_loss": None}
    exported = await asyncio.to_thread(
        cli, "audit", "export", "--since", "1h", "--config", desk.config)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [record["seq"] for record in records]


def statuses(answers: list[Answer]) -> dict[int, int]:
    return dict(collections.Counter(answer.status for answer in answers))


# --- rate limits --------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_user_place_limit_admits_exactly_its_count_across_two_processes(
    sim: RunningSimulator, start_desk: DeskFactory
) -> None:
    # A 30 s window: the whole burst lands in it however slow the machine, so "exactly" holds.
    desk, a, b = await two_replicas(start_desk, order_settings(place=10, window=30))
    before = await orders_placed(sim)
    answers = await asyncio.gather(*(
        desk.place((a, b)[i % 2], "trader-a") for i in range(200)))
    assert statuses(answers) == {200: 10, 429: 190}
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == "10"
        if answer.status == 429:
            assert answer.code == "rate_limited"
            assert int(answer.headers["Retry-After"]) >= 1
    assert await orders_placed(sim) - before == 10
    await assert_audit_exports_whole(desk, a)


@pytest.mark.redis
async def test_an_account_place_limit_is_shared_by_its_users_across_two_processes(
    sim: RunningSimulator, start_desk: DeskFactory
) -> None:
    desk, a, b = await two_replicas(start_desk, order_settings(account_place=6, window=30))
    before = await orders_placed(sim)
    answers = await asyncio.gather(*(
        desk.place((a, b)[i % 2], ("trader-a", "trader-b")[i // 2 % 2]) for i in range(40)))
    assert statuses(answers) == {200: 6, 429: 34}
    refused = [answer for answer in answers if answer.status == 429]
    assert {answer.headers["RateLimit-Limit"] for answer in refused} == {"6"}
    assert all("account desk-alpha" in answer.body["error"]["message"] for answer in refused)
    assert await orders_placed(sim) - before == 6
    assert (await desk.place(b, "beta-trader")).status == 200  # another account's own quota


# --- kill switches ------------------------------------------------------------------------------

SWITCHES = {
    # scope: (target, a user it stops, a user it lets place)
    "desk": ("", "trader-a", None),
    "account": ("desk-alpha", "trader-b", "beta-trader"),
    "user": ("trader-a", "trader-a", "trader-b"),
}


@pytest.mark.redis
@pytest.mark.parametrize("scope", list(SWITCHES))
async def test_a_kill_switch_set_on_one_process_stops_the_other_within_a_second(
    start_desk: DeskFactory, scope: str
) -> None:
    target, stopped, spared = SWITCHES[scope]
    desk, a, b = await two_replicas(start_desk)
    earlier = await desk.placed_id(a, stopped)
    reason = f"halt {scope} for the test"
    engaged = await desk.switch(a, scope=scope, target=target, reason=reason)
    assert engaged.status == 200, engaged.body

    async def b_refuses() -> bool:
        return (await desk.place(b, stopped)).status == 423

    assert await eventually(b_refuses, within=WITHIN)
    refused = await desk.place(b, stopped)
    assert (refused.status, refused.code) == (423, "kill_switch_engaged")
    assert reason in refused.body["error"]["message"]
    assert "desk-admin" in refused.body["error"]["message"]
    cancel = f"/v1/markets/BCCBTC/orders/{earlier}/_cancel"
    assert (await desk.call(b, "POST", cancel, stopped)).status == 200
    if spared is not None:
        assert (await desk.place(b, spared)).status == 200

    released = await desk.switch(b, scope=scope, target=target, engaged=False)
    assert released.status == 200, released.body
    assert released.body["released"]["reason"] == reason

    async def a_accepts() -> bool:
        return (await desk.place(a, stopped)).status == 200

    assert await eventually(a_accepts, within=WITHIN)


@pytest.mark.redis
async def test_a_kill_switch_survives_a_restart_of_every_process(
    start_desk: DeskFactory
) -> None:
    desk, a, _ = await two_replicas(start_desk)
    engaged = await desk.switch(a, scope="account", target="desk-alpha", reason="restart test")
    assert engaged.status == 200, engaged.body
    desk.kill_all()
    fresh = await desk.start()
    refused = await desk.place(fresh, "trader-a")
    assert (refused.status, refused.code) == (423, "kill_switch_engaged")
    assert "restart test" in refused.body["error"]["message"]
    listed = await desk.call(fresh, "GET", "/admin/kill-switch", "desk-admin")
    assert [(s["scope"], s["target"]) for s in listed.body["engaged"]] == [
        ("account", "desk-alpha")]


@pytest.mark.redis
async def test_a_user_kill_switch_cancels_exactly_that_users_pending_orders(
    sim: RunningSimulator, start_desk: DeskFactory
) -> None:
    desk, a, b = await two_replicas(start_desk)
    mine = [await desk.placed_id(a, "trader-a"), await desk.placed_id(b, "trader-a"),
            await desk.placed_id(b, "trader-a", "BTGBTC")]
    theirs = {await desk.placed_id(a, "trader-b"), await desk.placed_id(b, "trader-b", "BTGBTC")}

    engaged = await desk.switch(b, scope="user", target="trader-a", reason="runaway algo",
                                cancel_pending=True)
    assert engaged.status == 200, engaged.body
    assert engaged.body["cancel_pending"] == {"cancelled": 3, "failed": 0}
    assert await pending_ids(sim, "desk-alpha") == theirs
    intents = await desk.audit(a, action="cancel", kind="intent")
    outcomes = await desk.audit(a, action="cancel", kind="outcome", outcome="accepted")
    assert order_ids(intents) == order_ids(outcomes) == sorted(mine)
    assert sorted(record["event"]["order_id"] for record in outcomes) == sorted(mine)
    [admin] = await desk.audit(a, kind="admin")
    assert admin["event"]["action"] == "kill_switch.engage"
    assert admin["event"]["params"]["cancel_pending"] == "true"


@pytest.mark.redis
async def test_an_account_kill_switch_cancels_every_pending_order_of_the_account(
    sim: RunningSimulator, start_desk: DeskFactory
) -> None:
    desk, a, b = await two_replicas(start_desk)
    through_gateway = [await desk.placed_id(a, "trader-a"), await desk.placed_id(b, "trader-b")]
    outside = [(await sim.place("BCCBTC", 2, "0.01", "0.09"))["id"],
               (await sim.place("BTGBTC", 1, "0.01", "0.5"))["id"]]
    other_account = await pending_ids(sim, "desk-beta") | {
        (await sim.place("BCCBTC", 2, "0.01", "0.09", account="desk-beta"))["id"]}

    engaged = await desk.switch(a, scope="account", target="desk-alpha", reason="desk closing",
                                cancel_pending=True)
    assert engaged.status == 200, engaged.body
    assert engaged.body["cancel_pending"] == {"cancelled": 4, "failed": 0}
    assert await pending_ids(sim, "desk-alpha") == set()
    assert await pending_ids(sim, "desk-beta") == other_account
    intents = await desk.audit(b, action="cancel", kind="intent", account="desk-alpha")
    assert order_ids(intents) == sorted(through_gateway + outside)
    await assert_audit_exports_whole(desk, b)


# --- the audit trail, from the command line -----------------------------------------------------


@pytest.mark.redis
async def test_the_audit_chain_of_two_processes_verifies_and_exports_whole(
    start_desk: DeskFactory
) -> None:
    desk, a, b = await two_replicas(start_desk, order_settings(place=5, window=30))
    answers = await asyncio.gather(*(desk.place((a, b)[i % 2], "trader-a") for i in range(20)))
    assert statuses(answers) == {200: 5, 429: 15}
    await desk.place(b, "trader-b")
    assert (await desk.switch(a, scope="user", target="trader-b", reason="audit run",
                              cancel_pending=True)).status == 200

    async def b_refuses() -> bool:
        return (await desk.place(b, "trader-b")).status == 423

    assert await eventually(b_refuses, within=WITHIN)
    assert (await desk.switch(b, scope="user", target="trader-b", engaged=False)).status == 200
    kinds = collections.Counter(r["event"]["kind"] for r in await desk.audit(a))
    assert kinds["refusal"] >= 15
    assert kinds["admin"] == 2
    await assert_audit_exports_whole(desk, b)
