"""``expie-gateway demo``: the simulator and the gateway in one process, on loopback.

The one module of ``gateway`` that imports ``simulator``. Embedded defaults: in-process stores,
a signing key made at start, the accounts' upstream tokens read from the simulator's config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from gateway.app import Overrides, create_app
from gateway.auth.secret import Secret
from gateway.auth.signing import KeyRing, generate_signing_key
from gateway.auth.tokens import TokenIssuer
from gateway.core.principal import ALL_SCOPES, Scope, format_scopes
from gateway.logs import configure_logging
from gateway.server import ListenFailed, listen, new_event_loop
from gateway.settings import Settings, UpstreamSettings, load_settings
from gateway.web.edge import GatewayRunner
from simulator.app import create_app as create_simulator
from simulator.config import SimConfig, load_config

DEMO_SETTINGS = Path("config/demo.yaml")
SIMULATOR_CONFIG = Path("config/simulator.yaml")
DEMO_USER = "demo-trader"
DEMO_SECRET = "demo-trader-secret-2026"  # matches the example hash in config/users.example.yaml
ACTIVITY = 20.0
LOOPBACK = "127.0.0.1"


def run_demo(gateway_port: int, simulator_port: int) -> None:
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(gateway_port, simulator_port))
    finally:
        loop.close()


async def _serve(gateway_port: int, simulator_port: int) -> None:
    sim_config = load_config(SIMULATOR_CONFIG)
    settings = _demo_settings(gateway_port, simulator_port)
    keyring = KeyRing(generate_signing_key(f"demo-{int(time.time())}"), [])
    tokens = {account.name: Secret(account.token) for account in sim_config.accounts}
    simulator = create_simulator(sim_config, seed=1, activity=ACTIVITY)
    runners = [await _start(web.AppRunner(simulator, access_log=None), simulator_port,
                            "SIM_PORT")]
    try:
        gateway = create_app(settings, Overrides(keyring=keyring, account_tokens=tokens))
        runners.append(await _start(GatewayRunner(gateway), gateway_port, "PORT"))
    except BaseException:
        await runners[0].cleanup()
        raise
    issuer = TokenIssuer(keyring, settings.auth.issuer, settings.auth.audience, time.time)
    scopes = ALL_SCOPES - {Scope.ADMIN}
    token, _ = issuer.issue(DEMO_USER, [scope.value for scope in scopes], settings.auth.token_ttl)
    print(banner(sim_config, gateway_port, simulator_port, token, scopes), flush=True)
    # From here on: a port refused before is one clear line, not a log around it.
    configure_logging(settings.logging)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _demo_settings(gateway_port: int, simulator_port: int) -> Settings:
    settings = load_settings(DEMO_SETTINGS, environ={})
    upstream = UpstreamSettings(base_url=f"http://127.0.0.1:{simulator_port}")
    server = dataclasses.replace(settings.server, port=gateway_port)
    return dataclasses.replace(settings, server=server, upstream=upstream)


async def _start(runner: web.AppRunner, port: int, setting: str) -> web.AppRunner:
    await runner.setup()
    try:
        await listen(runner, LOOPBACK, port)
    except ListenFailed as exc:
        await runner.cleanup()
        raise ListenFailed(f"{exc.message} (pick another: make demo {setting}=...)") from None
    return runner


def banner(
    sim_config: SimConfig, gateway_port: int, simulator_port: int, token: str,
    scopes: frozenset[Scope],
) -> str:
    gateway = f"http://127.0.0.1:{gateway_port}"
    auth = f'-H "Authorization: Bearer {token}"'
    return "\n".join([
        "Expie Gateway demo",
        f"  gateway    {gateway}   (REST /v1/..., WebSocket /ws, POST /auth/token, "
        "/.well-known/jwks.json)",
        f"  simulator  http://127.0.0.1:{simulator_port}/v1   (the upstream exchange, "
        f"{len(sim_config.markets)} live markets)",
        "",
        f"A token for {DEMO_USER} (scopes: {format_scopes(scopes)}), valid for an hour:",
        f"  {token}",
        "",
        "Try, through the gateway:",
        f"  curl -s {auth} {gateway}/v1/markets/BCCBTC/ticker",
        f"  curl -s {auth} -H 'Idempotency-Key: demo-1' -d side=2 -d amount=1 -d price=0.13 "
        f"{gateway}/v1/markets/BCCBTC/orders",
        f"  curl -s {auth} {gateway}/v1/markets/BCCBTC/orders/_pending   (this user's own orders)",
        f"  curl -s {auth} {gateway}/v1/balance/summary",
        "Live depth through the gateway's WebSocket fan-out (Ctrl-C to stop):",
        "  .venv/bin/python -c \"import asyncio, aiohttp",
        "async def main():",
        "    async with aiohttp.ClientSession() as http, http.ws_connect(",
        f"            'ws://127.0.0.1:{gateway_port}/ws?token={token}') as ws:",
        "        await ws.send_json({'method': 'depth.subscribe', 'params': ['BCCBTC', 10, '0'], "
        "'id': 1})",
        "        async for message in ws: print(message.data)",
        "asyncio.run(main())\"",
        "The audit trail of those calls (a hash chain; the demo keeps it in var/demo-audit.jsonl):",
        "  .venv/bin/expie-gateway audit verify --config config/demo.yaml",
        "A new token with the client-credentials grant:",
        f"  curl -s -u {DEMO_USER}:{DEMO_SECRET} -d grant_type=client_credentials "
        f"-d scope=market:read {gateway}/auth/token",
        "",
        f"Ctrl-C (or kill {os.getpid()}) stops both.",
    ])
