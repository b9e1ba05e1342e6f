"""``expie-gateway serve`` leaving a Kubernetes Service: SIGTERM, drain, exit.

A real process in front of the simulator. Probes open a new connection each time, as a kubelet
and a load balancer do, so "refused" means the listener is closed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.core.audit_chain import AuditRecord
from tests.process_harness import cli, free_port, health, process_config, serving
from tests.simulator_harness import RunningSimulator

DRAIN_DELAY, SHUTDOWN_TIMEOUT = 1.5, 8.0
AUDIT_FLUSH = 5.0  # the audit trail's own bound on writing its spool at exit
SOCKETS = 3
ORDERS = "/v1/markets/BCCBTC/orders"


async def probe(port: int) -> int | None:
    """``/readyz`` on a fresh connection: its status, or None when the connection is refused."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            async with http.get(f"http://127.0.0.1:{port}/readyz",
                                timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status
        except aiohttp.ClientConnectorError:
            return None


async def probes_until_refused(port: int, budget: float) -> list[tuple[float, int | None]]:
    """(monotonic time, status) of a probe every 50 ms until one is refused or ``budget`` ends."""
    seen: list[tuple[float, int | None]] = []
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        status = await probe(port)
        seen.append((time.monotonic(), status))
        if status is None:
            break
        await asyncio.sleep(0.05)
    return seen


async def close_code(socket: aiohttp.ClientWebSocketResponse, budget: float) -> object:
    """The code of the close frame ``socket`` gets, skipping the updates before it."""
    deadline = time.monotonic() + budget
    while (left := deadline - time.monotonic()) > 0:
        message = await socket.receive(timeout=left)
        if message.type is not aiohttp.WSMsgType.TEXT:
            return message.type, message.data
    return None


def audit_kinds(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [AuditRecord.from_json(line).event.kind.value for line in lines]


@pytest.mark.timeout(90)
async def test_sigterm_drains_before_the_listener_closes_and_answers_what_is_in_flight(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    config = process_config(tmp_path, sim, audit={"file": str(audit)})
    port = free_port()
    environ = {"EXPIE_GW_SERVER__DRAIN_DELAY": str(DRAIN_DELAY),
               "EXPIE_GW_SERVER__SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}
    issued = cli("token", "issue", "--config", config, "--user", "demo-trader")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    with serving(config, port, environ) as process:
        assert await asyncio.to_thread(health, port) == {"status": "ok"}
        assert await probe(port) == 200
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(f"http://127.0.0.1:{port}/ws?token={token}")
                       for _ in range(SOCKETS)]
            await sockets[0].send_json({"method": "depth.subscribe",
                                        "params": ["BCCBTC", 10, "0"], "id": 1})
            assert (await sockets[0].receive_json(timeout=10))["id"] == 1
            # An order the exchange answers only after the listener has closed.
            await sim.set_faults(latency_ms=(DRAIN_DELAY + 1.5) * 1000)
            order = asyncio.create_task(http.post(
                f"http://127.0.0.1:{port}{ORDERS}", headers={"Authorization": f"Bearer {token}"},
                data={"side": "1", "amount": "1", "price": "0.2"}))
            await asyncio.sleep(0.3)  # the order has reached the gateway
            signalled = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            seen = await probes_until_refused(port, DRAIN_DELAY + SHUTDOWN_TIMEOUT)
            closes = [await close_code(socket, SHUTDOWN_TIMEOUT) for socket in sockets]
            response = await asyncio.wait_for(order, SHUTDOWN_TIMEOUT)
            answered = response.status, await response.json()
            response.release()
            exit_code = await asyncio.to_thread(
                process.wait, DRAIN_DELAY + SHUTDOWN_TIMEOUT + AUDIT_FLUSH + 5)
        stopped = time.monotonic()

    statuses = [status for _, status in seen]
    assert statuses[-1] is None, f"the listener never closed: {statuses}"
    assert 503 in statuses, f"refused before readiness said 503: {statuses}"
    first_503 = statuses.index(503)
    assert all(status == 503 for status in statuses[first_503:-1]), statuses
    refused_at = seen[-1][0]
    assert refused_at - signalled >= DRAIN_DELAY, "the listener closed during the drain delay"
    assert closes == [
        (aiohttp.WSMsgType.CLOSE, 1001)] * SOCKETS
    assert answered[0] == 200, answered
    assert "id" in answered[1]
    assert audit_kinds(audit) == ["intent", "outcome"]
    assert exit_code == 0
    assert stopped - signalled < DRAIN_DELAY + SHUTDOWN_TIMEOUT + AUDIT_FLUSH
