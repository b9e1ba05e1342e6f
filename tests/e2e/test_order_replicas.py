"""The order desk on two ``expie-gateway serve`` processes sharing one Redis.

Replicas in separate OS processes share nothing but Redis: a place limit holds exactly however a
burst spreads over them, a kill switch set on one stops the other within a second (and outlives
both), cancelling what a switch covers reaches orders placed anywhere, and the one audit chain
they both append to verifies and exports whole from the command line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDictProxy

from tests.process_harness import cli, free_port, health, serving
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

WITHIN = 1.0  # seconds a kill switch change may take to reach the other replica
TRADER = ["orders:read", "orders:write"]
USERS = [
    ("trader-a", TRADER, "desk-alpha"),
    ("trader-b", TRADER, "desk-alpha"),
    ("beta-trader", TRADER, "desk-beta"),
    ("desk-admin", ["admin", *TRADER], "desk-alpha"),
]
BUY = {"side": "2", "amount": "0.01", "price": "0.1"}  # below the book: stays pending


def order_settings(place: int = 1000, account_place: int = 1000, window: float = 1) -> object:
    """Limits that do not interfere unless asked, and no pacing (it is per process)."""
    def rate(count: int) -> dict[str, float]:
        return {"count": count, "window": window}
    return {"limits": {"place": rate(place), "cancel": rate(1000)},
            "account_limits": {"place": rate(account_place), "cancel": rate(1000)},
            "pacing": {"rate": 0}}


def write_config(directory: Path, sim: RunningSimulator, redis_url: str, prefix: str,
                 orders: object) -> Path:
    key = directory / "k1.pem"
    done = cli("keys", "generate", "--kid", "k1", "--out", key)
    assert done.returncode == 0, done.stderr
    accounts = []
    for account in sim.config.accounts:
        (directory / account.name).write_text(account.token, encoding="utf-8")
        accounts.append({"name": account.name, "token_file": str(directory / account.name)})
    users = directory / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [
        {"id": user, "name": user, "scopes": scopes, "markets": "all", "account": account}
        for user, scopes, account in USERS]}), encoding="utf-8")
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "upstream": {"base_url": sim.url("").rstrip("/"), "retries": 0},
        "auth": {"signing_key": "k1",
                 "keys": [{"kid": "k1", "algorithm": "EdDSA", "private_key_file": str(key)}]},
        "users": {"file": str(users)},
        "accounts": accounts,
        "redis": {"url": redis_url, "key_prefix": prefix},
        "audit": {"file": str(directory / "audit.jsonl")},  # unused: Redis holds the audit
        "orders": orders,
    }), encoding="utf-8")
    return config


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None


@dataclass
class Desk:
    """Serving processes of one config, tokens of every user, and a client for them."""

    config: Path
    http: aiohttp.ClientSession
    stack: contextlib.ExitStack
    tokens: dict[str, str] = field(default_factory=dict)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    async def start(self) -> int:
        port = free_port()
        self.processes[port] = self.stack.enter_context(serving(self.config, port))
        assert await asyncio.to_thread(health, port) == {"status": "ok"}
        return port

    def kill_all(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(timeout=10)

    async def call(self, port: int, method: str, path: str, user: str, **kwargs: Any) -> Answer:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        async with self.http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers,
                                     **kwargs) as response:
            return Answer(response.status, await response.json(), response.headers)

    async def place(self, port: int, user: str, market: str = "BCCBTC",
                    order: Mapping[str, str] = BUY) -> Answer:
        return await self.call(port, "POST", f"/v1/markets/{market}/orders", user,
                               data=dict(order))

    async def placed_id(self, port: int, user: str, market: str = "BCCBTC") -> int:
        answer = await self.place(port, user, market)
        assert answer.status == 200, answer.body
        order_id: int = answer.body["id"]
        return order_id

    async def switch(self, port: int, **body: object) -> Answer:
        return await self.call(port, "POST", "/admin/kill-switch", "desk-admin", json=body)

    async def audit(self, port: int, **query: str) -> list[dict[str, Any]]:
        """Every record GET /admin/audit returns for ``query``, page after page."""
        records: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            answer = await self.call(port, "GET", "/admin/audit", "desk-admin",
                                     params={**query, "after": str(after), "limit": "1000"})
            assert answer.status == 200, answer.body
            records += answer.body["records"]
            after = answer.body["next_after"]
        return records


@dataclass
class DeskFactory:
    sim: RunningSimulator
    directory: Path
    redis_url: str
    prefix: str
    http: aiohttp.ClientSession
    stack: contextlib.ExitStack

    async def __call__(self, orders: object | None = None) -> Desk:
        config = write_config(self.directory, self.sim, self.redis_url, self.prefix,
                              orders or order_settings())
        desk = Desk(config, self.http, self.stack)
        issued = await asyncio.gather(*(asyncio.to_thread(
            cli, "token", "issue", "--config", config, "--user", user) for user, _, _ in USERS))
        for (user, _, _), done in zip(USERS, issued, strict=True):
            assert done.returncode == 0, done.stderr
            desk.tokens[user] = done.stdout.strip()
        return desk


@pytest.fixture
async def start_desk(
    sim: RunningSimulator, tmp_path: Path, redis_url: str, key_prefix: str
) -> AsyncIterator[DeskFactory]:
    """Builds a desk (config, tokens) on the real Redis; its processes are stopped after."""
    with contextlib.ExitStack() as stack:
        async with aiohttp.ClientSession() as http:
            yield DeskFactory(sim, tmp_path, redis_url, key_prefix, http, stack)


async def two_replicas(start_desk: DeskFactory, orders: object | None = None
                       ) -> tuple[Desk, int, int]:
    desk = await start_desk(orders)
    return desk, await desk.start(), await desk.start()


async def orders_placed(sim: RunningSimulator) -> int:
    placed: int = (await sim.stats())["orders"]["placed"]
    return placed


async def pending_ids(sim: RunningSimulator, account: str) -> set[int]:
    ids: set[int] = set()
    for market in ("BCCBTC", "BTGBTC", "ETHBTC"):
        page = await sim.get(f"/v1/markets/{market}/orders/_pending", account, limit="100")
        ids |= {record["id"] for record in page["records"]}
    return ids


def order_ids(records: list[dict[str, Any]]) -> list[int]:
    return sorted(int(record["event"]["params"]["order_id"]) for record in records)


async def assert_audit_exports_whole(desk: Desk, port: int) -> None:
    """``audit verify`` accepts the chain and ``audit export`` writes every record it holds."""
    records = await desk.audit(port)
    verified = await asyncio.to_thread(cli, "audit", "verify", "--config", desk.config)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout) == {
        "ok": True, "checked": len(records), "problem": None, "seq": None}
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
