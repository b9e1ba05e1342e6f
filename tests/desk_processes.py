"""``expie-gateway serve`` processes of one desk config on the real Redis, and a client for them.

``DeskFactory`` writes the config (signing key, users, account tokens, order settings) and issues
every user's token with the CLI; ``Desk`` starts replicas on free loopback ports and calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDictProxy

from tests.process_harness import cli, free_port, health, process_config, serving
from tests.simulator_harness import RunningSimulator

TRADER = ["market:read", "orders:read", "orders:write"]
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
                 orders: object, *, require_persistence: bool = False,
                 **sections: object) -> Path:
    """The desk's config (``sections`` added); ``require_persistence`` off unless asked: the
    shared Redis of the tests keeps nothing on disk."""
    users = directory / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [
        {"id": user, "name": user, "scopes": scopes, "markets": "all", "account": account}
        for user, scopes, account in USERS]}), encoding="utf-8")
    return process_config(
        directory, sim, users={"file": str(users)},
        redis={"url": redis_url, "key_prefix": prefix,
               "require_persistence": require_persistence},
        audit={"file": str(directory / "audit.jsonl"),  # unused: Redis holds the audit
               "checkpoint_file": str(directory / "audit-checkpoint.json")},
        orders=orders, **sections)


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

    async def start(self, args: Sequence[str] = ()) -> int:
        port = free_port()
        # Logged to a file: a pipe nobody reads would stall a process that logs enough.
        log = self.config.parent / f"serve-{port}.log"  # read with ``log``
        self.processes[port] = self.stack.enter_context(
            serving(self.config, port, args=args, log=log))
        assert await asyncio.to_thread(health, port) == {"status": "ok"}
        return port

    def log(self, port: int) -> str:
        """What the process on ``port`` has logged so far."""
        return (self.config.parent / f"serve-{port}.log").read_text(encoding="utf-8",
                                                                    errors="replace")

    def kill_all(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(timeout=10)

    async def call(self, port: int, method: str, path: str, user: str,
                   headers: Mapping[str, str] | None = None, **kwargs: Any) -> Answer:
        sent = {"Authorization": f"Bearer {self.tokens[user]}", **(headers or {})}
        async with self.http.request(method, f"http://127.0.0.1:{port}{path}", headers=sent,
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
    require_persistence: bool = False

    async def __call__(self, orders: object | None = None, **sections: object) -> Desk:
        config = write_config(self.directory, self.sim, self.redis_url, self.prefix,
                              orders or order_settings(),
                              require_persistence=self.require_persistence, **sections)
        desk = Desk(config, self.http, self.stack)
        issued = await asyncio.gather(*(asyncio.to_thread(
            cli, "token", "issue", "--config", config, "--user", user) for user, _, _ in USERS))
        for (user, _, _), done in zip(USERS, issued, strict=True):
            assert done.returncode == 0, done.stderr
            desk.tokens[user] = done.stdout.strip()
        return desk


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
