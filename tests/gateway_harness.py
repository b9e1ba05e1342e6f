"""A running gateway for tests, in front of a running simulator, both on loopback sockets."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from gateway.app import Overrides, create_app
from gateway.auth.secret import Secret
from gateway.auth.signing import KeyRing, generate_signing_key
from gateway.auth.tokens import TokenIssuer
from gateway.settings import RedisSettings, Settings, UpstreamSettings, load_settings
from gateway.web.edge import GatewayRunner
from tests.simulator_harness import RunningSimulator

ROOT = Path(__file__).resolve().parent.parent
DEMO_SETTINGS = ROOT / "config" / "demo.yaml"
USERS_FILE = ROOT / "config" / "users.example.yaml"
ISSUER = "expie-gateway"


def gateway_settings(simulator: RunningSimulator, redis: RedisSettings | None = None) -> Settings:
    """The demo's settings against ``simulator``; without Redis, the audit file and the kill
    switches' state file go to a fresh temporary directory (each gateway its own). A ``redis``
    given is taken without ``require_persistence``: the tests' shared Redis keeps nothing on disk
    on purpose (a test of the check builds its settings itself)."""
    settings = load_settings(DEMO_SETTINGS, environ={})
    state = Path(tempfile.mkdtemp(prefix="expie-gw-test-"))
    return dataclasses.replace(
        settings,
        upstream=UpstreamSettings(base_url=simulator.url("").rstrip("/")),
        users_file=USERS_FILE,
        redis=RedisSettings() if redis is None else dataclasses.replace(
            redis, require_persistence=False),
        audit=dataclasses.replace(settings.audit, backend="auto", file=state / "audit.jsonl"),
        orders=dataclasses.replace(settings.orders, kill_switch=dataclasses.replace(
            settings.orders.kill_switch, state_file=state / "kill-switches.json")),
    )


def account_tokens(simulator: RunningSimulator) -> dict[str, Secret]:
    return {account.name: Secret(account.token) for account in simulator.config.accounts}


class GatewayTestServer(TestServer):
    """The app served as the gateway process serves it: through ``GatewayRunner``'s edge."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@dataclass
class RunningGateway:
    server: TestServer
    settings: Settings
    keyring: KeyRing
    http: aiohttp.ClientSession
    clock: Callable[[], float]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def issuer(self, keyring: KeyRing | None = None) -> TokenIssuer:
        auth = self.settings.auth
        return TokenIssuer(keyring or self.keyring, auth.issuer, auth.audience, self.clock)

    def token(self, user: str = "demo-trader", scopes: list[str] | None = None,
              ttl: float = 900) -> str:
        granted = scopes if scopes is not None else [
            "market:read", "orders:read", "orders:write", "balance:read", "admin"]
        return self.issuer().issue(user, granted, ttl)[0]

    async def call(self, method: str, path: str, token: str | None = None,
                   **kwargs: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.url(path), headers=headers,
                                     **kwargs) as response:
            text = await response.text()
            body = await response.json() if response.content_type.endswith("json") else text
            return response.status, body, response.headers


async def start_gateway(
    simulator: RunningSimulator, *, keyring: KeyRing | None = None,
    clock: Callable[[], float] = time.time, redis: RedisSettings | None = None,
    settings: Settings | None = None, overrides: Overrides | None = None,
) -> RunningGateway:
    keyring = keyring or KeyRing(generate_signing_key("test-key"), [])
    settings = settings or gateway_settings(simulator, redis)
    given = overrides or Overrides()
    app = create_app(settings, dataclasses.replace(
        given, keyring=keyring, account_tokens=given.account_tokens or account_tokens(simulator),
        clock=clock))
    server = GatewayTestServer(app, host="127.0.0.1")
    await server.start_server()
    return RunningGateway(server, settings, keyring, aiohttp.ClientSession(), clock)
