"""The processes of a chaos run, on loopback and stopped by their PIDs, and a client for them.

A ``Lab`` is one run's own ``redis-server`` (AOF with ``appendfsync always``: restarted after a
SIGKILL it holds every write it acknowledged; never the shared Redis), one ``python -m
simulator`` (a quiet market: only the scenarios move its books) and a directory with the
gateway's signing key, a users file and each user's token. Each scenario starts its own
``expie-gateway serve`` replicas (``Lab.replicas``) with its own settings and Redis key prefix,
so scenarios share no gateway state, and counts what the exchange saw by ``/_sim/stats``
deltas. Starting, waiting for and stopping processes is ``bench.common``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDict, CIMultiDictProxy

from bench.common import (
    HOST,
    REPO,
    UNLIMITED,
    RedisServer,
    Server,
    audit_file,
    clean_environment,
    free_port,
    gateway_cli,
    gateway_cli_run,
    gateway_command,
    running,
    simulator_accounts,
    simulator_command,
    simulator_control,
    stop,
    wait_ready,
    write_gateway_config,
)

# Who calls the gateway in the scenarios: two traders sharing an exchange account (a retry
# storm of one must not spend the other's budget), an administrator who reads the trail, and
# the desk's operator, who may cancel any order of the account (ones whose owner was lost too).
USERS: dict[str, list[str]] = {
    "trader-a": ["market:read", "orders:read", "orders:write"],
    "trader-b": ["orders:read", "orders:write"],
    "desk-admin": ["admin", "orders:read"],
    "desk-ops": ["orders:read", "orders:write", "orders:desk"],
}
ACCOUNT = "desk-alpha"
CALL_TIMEOUT = 30.0  # longer than any gateway timeout a scenario sets: the gateway answers first
AUDIT_PAGES = 100  # pages of 1,000 records: far more than any scenario writes
Settings = Mapping[str, Mapping[str, object]]


class ChaosError(RuntimeError):
    """The lab could not do what a scenario asked (a process or an answer it needs is missing)."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer; status 0 when no answer came (the connection failed or was cut)."""

    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"


@dataclass(frozen=True)
class Replica:
    """One ``expie-gateway serve`` process of a scenario."""

    server: Server
    config: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def kill(self) -> None:
        """``kill -9``: the process gets no chance to finish anything."""
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=10)


@dataclass
class Lab:
    directory: Path
    redis: RedisServer
    sim_port: int
    http: aiohttp.ClientSession
    tokens: dict[str, str]
    account_headers: dict[str, str]
    control_headers: dict[str, str]

    @property
    def sim_base(self) -> str:
        return f"http://{HOST}:{self.sim_port}"

    @contextlib.asynccontextmanager
    async def replicas(self, name: str, count: int, settings: Settings | None = None
                       ) -> AsyncIterator[list[Replica]]:
        """``count`` gateway replicas sharing the key prefix ``chaos:{name}:``, their settings
        the lab's defaults with ``settings``' sections merged in; all stopped afterwards."""
        started: list[Replica] = []
        try:
            for number in range(count):
                started.append(await asyncio.to_thread(
                    self._start_replica, name, number, settings or {}))
            await asyncio.gather(*(asyncio.to_thread(wait_ready, replica.server, {})
                                   for replica in started))
            yield started
        finally:
            await asyncio.gather(*(asyncio.to_thread(stop, replica.server)
                                   for replica in started))

    def _start_replica(self, name: str, number: int, settings: Settings) -> Replica:
        """Write the config of ``name``'s replica ``number`` and start it (not waiting for it
        to answer)."""
        port = free_port()
        replica = f"{name}-{number}"
        config = write_gateway_config(self.directory, port, self.sim_port, name=replica,
                                      extra=merged(self.defaults(name, replica, port), settings))
        log = self.directory / f"{replica}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(gateway_command(config), cwd=REPO, stdout=sink,
                                       stderr=subprocess.STDOUT, env=clean_environment())
        server = Server(f"gateway {replica}", process, f"http://{HOST}:{port}/readyz", log)
        return Replica(server, config, port)

    def checkpoint_file(self, name: str) -> Path:
        """The export checkpoint (``audit.checkpoint_file``) of ``name``'s replicas, in this
        lab's directory: never the repository's ``var/``, which a developer's own runs move."""
        return self.directory / f"{name}-audit-checkpoint.json"

    def defaults(self, name: str, replica: str, port: int) -> dict[str, dict[str, object]]:
        """What every scenario's gateway (``replica``) runs with: this lab's Redis under the
        scenario's own prefix, its audit file and checkpoint in this lab's directory, no drain
        delay (a scenario kills or stops replicas itself), limits far above what a scenario
        sends unless it sets its own, and no pacing (it is per process)."""
        return {
            "server": {"host": HOST, "port": port, "drain_delay": 0},
            "upstream": {"base_url": self.sim_base},
            "users": {"file": str(self.directory / "users.yaml")},
            "redis": {"url": self.redis.url, "key_prefix": f"chaos:{name}:"},
            "audit": {"file": str(audit_file(self.directory, replica)),
                      "checkpoint_file": str(self.checkpoint_file(name))},
            "orders": {"limits": {"place": UNLIMITED, "cancel": UNLIMITED, "read": UNLIMITED,
                                  "market_data": UNLIMITED},
                       "account_limits": {"place": UNLIMITED, "cancel": UNLIMITED},
                       "pacing": {"rate": 0}},
        }

    async def call(self, url: str, method: str = "GET", *,
                   headers: Mapping[str, str] | None = None, **kwargs: Any) -> Answer:
        try:
            async with self.http.request(
                    method, url, headers=dict(headers or {}),
                    timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT), **kwargs) as response:
                body = (await response.json() if response.content_type.endswith("json")
                        else await response.read())
                return Answer(response.status, body, response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(0, {"error": {"code": type(exc).__name__}}, _NO_HEADERS)

    async def gateway(self, replica: Replica, method: str, path: str, user: str, *,
                      headers: Mapping[str, str] | None = None, **kwargs: Any) -> Answer:
        """``method path`` on ``replica`` as ``user`` (its token from ``token issue``)."""
        sent = {"Authorization": f"Bearer {self.tokens[user]}", **(headers or {})}
        return await self.call(replica.base + path, method, headers=sent, **kwargs)

    async def exchange(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method path`` straight at the simulator as the desk's account; the JSON answer."""
        return _ok(await self.call(self.sim_base + path, method,
                                   headers=self.account_headers, **kwargs))

    async def stats(self) -> Any:
        return _ok(await self.call(f"{self.sim_base}/_sim/stats", headers=self.control_headers))

    async def faults(self, **knobs: object) -> None:
        """``POST /_sim/faults`` with ``knobs`` (``clear=True`` resets every knob first)."""
        _ok(await self.call(f"{self.sim_base}/_sim/faults", "POST",
                            headers=self.control_headers, json=knobs))

    async def ready(self, replica: Replica) -> Any:
        return _ok(await self.call(f"{replica.base}/readyz"))

    async def records(self, replica: Replica, **query: str) -> list[dict[str, Any]]:
        """Every record (``seq``, ``prev``, ``hash``, ``event``) ``GET /admin/audit`` returns
        for ``query``, in order."""
        records: list[dict[str, Any]] = []
        after: int | None = 0
        for _ in range(AUDIT_PAGES):
            if after is None:
                return records
            page = _ok(await self.gateway(replica, "GET", "/admin/audit", "desk-admin",
                                          params={**query, "after": str(after),
                                                  "limit": "1000"}))
            records += page["records"]
            after = page["next_after"]
        raise ChaosError(f"the audit trail holds more than {AUDIT_PAGES} pages")

    async def audit(self, replica: Replica, **query: str) -> list[dict[str, Any]]:
        """The events of every record ``GET /admin/audit`` returns for ``query``, in order."""
        return [record["event"] for record in await self.records(replica, **query)]

    async def verify(self, replica: Replica) -> tuple[int, dict[str, Any]]:
        """``expie-gateway audit verify`` on the scenario's trail, held to its checkpoint and to
        any state loss reported in Redis: its exit status and its verdict (JSON)."""
        done = await asyncio.to_thread(gateway_cli_run, "audit", "verify", "--config",
                                       replica.config)
        try:
            verdict = json.loads(done.stdout)
        except ValueError:
            raise ChaosError(f"audit verify printed no verdict: {done.stderr.strip()}") from None
        return done.returncode, verdict

    async def chain_verified(self, replica: Replica) -> bool:
        """``audit verify`` passes: no record edited, missing or out of order, no break."""
        status, _ = await self.verify(replica)
        return status == 0

    async def gauge(self, replica: Replica, name: str) -> float | None:
        """The value of the unlabelled metric ``name`` on ``replica``'s ``/metrics`` (None:
        not there)."""
        answer = await self.call(f"{replica.base}/metrics")
        text = answer.body.decode() if isinstance(answer.body, bytes) else ""
        return next((float(line.removeprefix(f"{name} ")) for line in text.splitlines()
                     if line.startswith(f"{name} ")), None)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def merged(base: Settings, overrides: Settings) -> dict[str, dict[str, object]]:
    """``base`` with each section of ``overrides`` merged in key by key."""
    return {section: {**base.get(section, {}), **overrides.get(section, {})}
            for section in {**base, **overrides}}


def _ok(answer: Answer) -> Any:
    if answer.status != 200:
        raise ChaosError(f"expected 200, got {answer.status}: {answer.body!r}")
    return answer.body


@contextlib.asynccontextmanager
async def open_lab(directory: Path) -> AsyncIterator[Lab]:
    """Redis, the simulator, the users and their tokens in ``directory``; all stopped after."""
    redis_dir = directory / "redis"
    redis_dir.mkdir()
    redis = RedisServer(redis_dir, persistent=True)
    await asyncio.to_thread(redis.start)
    try:
        sim_port = free_port()
        with running("simulator", simulator_command(sim_port, activity=0),
                     f"http://{HOST}:{sim_port}/_sim/stats", simulator_control()):
            (directory / "users.yaml").write_text(yaml.safe_dump({"users": [
                {"id": user, "name": user, "scopes": scopes, "markets": "all",
                 "account": ACCOUNT} for user, scopes in USERS.items()]}), encoding="utf-8")
            tokens = await _issue_tokens(directory, sim_port, redis)
            account_token = dict(simulator_accounts())[ACCOUNT]
            connector = aiohttp.TCPConnector(limit=0)  # a retry storm opens many at once
            async with aiohttp.ClientSession(connector=connector) as http:
                yield Lab(directory, redis, sim_port, http, tokens,
                          {"Authorization": f"Bearer {account_token}"}, simulator_control())
    finally:
        await asyncio.to_thread(redis.stop)


async def _issue_tokens(directory: Path, sim_port: int, redis: RedisServer) -> dict[str, str]:
    """A token for each user, issued by the CLI with the key every replica's config names."""
    config = write_gateway_config(directory, free_port(), sim_port, name="tokens", extra={
        "users": {"file": str(directory / "users.yaml")}, "redis": {"url": redis.url}})
    issued = await asyncio.gather(*(asyncio.to_thread(
        gateway_cli, "token", "issue", "--config", config, "--user", user, "--ttl", "2h")
        for user in USERS))
    return {user: token.strip() for user, token in zip(USERS, issued, strict=True)}
