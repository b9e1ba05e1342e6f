"""Retries and the circuit breaker, against the simulator over loopback sockets.

The simulator's fault knobs make the exchange fail and its request counters prove what reached
it. Paths outside the market-data cache (balances, orders) are used, so every call the gateway
lets through is one upstream request; calls naming a market first need the gateway's cached
markets list, so tests using them fill that cache before the faults start.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from gateway.auth.secret import Secret
from gateway.upstream.rest import UpstreamClient
from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

BALANCE = "/v1/balance/summary"
BALANCE_ROUTE = "GET /v1/balance/summary"
ORDERS = "/v1/markets/BCCBTC/orders"
UNAVAILABLE = {"code": 3, "message": "service unavailable"}
GAUGE = 'expie_gateway_upstream_circuit_state{upstream="expie"}'


async def gateway_with(
    sim: RunningSimulator, start_gateway_for: StartGateway, **upstream: Any
) -> RunningGateway:
    settings = gateway_settings(sim)
    settings = dataclasses.replace(
        settings, upstream=dataclasses.replace(settings.upstream, retry_backoff=0.01, **upstream))
    return await start_gateway_for(sim, settings=settings)


async def upstream_requests(sim: RunningSimulator) -> dict[str, int]:
    counts: dict[str, int] = (await sim.stats())["rest_requests"]
    return counts


async def requests_since(sim: RunningSimulator, before: dict[str, int]) -> dict[str, int]:
    """Upstream requests per route since the ``before`` snapshot (routes with none left out)."""
    now = await upstream_requests(sim)
    return {route: count - before.get(route, 0) for route, count in now.items()
            if count != before.get(route, 0)}


async def balance_requests(sim: RunningSimulator) -> int:
    return (await upstream_requests(sim)).get(BALANCE_ROUTE, 0)


async def fill_markets_cache(gateway: RunningGateway) -> None:
    status, body, _ = await gateway.call("GET", f"{ORDERS}/_pending", gateway.token())
    assert status == 200, body


async def metric(gateway: RunningGateway, series: str) -> float | None:
    status, text, headers = await gateway.call("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return None


async def circuit(gateway: RunningGateway) -> str:
    status, body, _ = await gateway.call("GET", "/readyz")
    assert status == 200, body
    state: str = body["dependencies"]["upstream_circuit"]
    return state


# --- retries -------------------------------------------------------------------------------------


async def test_a_get_is_retried_until_the_retries_run_out_then_the_error_passes_through(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=2, breaker_failures=100)
    await sim.set_faults(error_rate=1.0, error_status=503)
    status, body, _ = await gateway.call("GET", BALANCE, gateway.token())
    assert (status, body) == (503, UNAVAILABLE)
    assert await upstream_requests(sim) == {BALANCE_ROUTE: 3}
    assert await metric(gateway, 'expie_gateway_upstream_retries_total'
                                 '{cause="http_503",upstream="expie"}') == 2
    assert await metric(gateway, 'expie_gateway_upstream_failures_total'
                                 '{cause="http_503",upstream="expie"}') == 3


async def test_a_flaky_exchange_is_hidden_by_retries(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=8, breaker_failures=100)
    await sim.set_faults(error_rate=0.5, error_status=503)
    for _ in range(4):
        status, body, _ = await gateway.call("GET", BALANCE, gateway.token())
        assert status == 200, body
    assert (await upstream_requests(sim))[BALANCE_ROUTE] > 4


class Recorder:
    """The client's injected ``sleep`` and ``UpstreamEvents``: what it would wait, what it says."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.events: list[tuple[str, str]] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def retried(self, cause: str) -> None:
        self.events.append(("retried", cause))

    def failed(self, cause: str) -> None:
        self.events.append(("failed", cause))


async def test_the_backoff_doubles_with_full_jitter(sim: RunningSimulator) -> None:
    settings = dataclasses.replace(gateway_settings(sim).upstream, retries=3, retry_backoff=0.2)
    recorder = Recorder()
    client = UpstreamClient(settings, events=recorder, random_source=lambda: 0.5,
                            sleep=recorder.sleep)
    await client.start()
    try:
        await sim.set_faults(error_rate=1.0, error_status=504)
        answer = await client.send("GET", "/v1/balance/summary", Secret(sim.token()))
    finally:
        await client.close()
    assert answer.status == 504
    assert recorder.slept == pytest.approx([0.1, 0.2, 0.4])
    assert recorder.events == [("failed", "http_504")] + [
        ("retried", "http_504"), ("failed", "http_504")] * 3


async def test_a_timeout_is_retried_for_a_get(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=1, total_timeout=0.2,
                                 breaker_failures=100)
    await sim.set_faults(latency_ms=1000)
    status, body, _ = await gateway.call("GET", BALANCE, gateway.token())
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    assert await upstream_requests(sim) == {BALANCE_ROUTE: 2}


async def test_orders_are_never_retried(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=3, breaker_failures=100)
    await fill_markets_cache(gateway)
    before = await upstream_requests(sim)
    await sim.set_faults(error_rate=1.0, error_status=503)
    # Desk-wide, so the gateway does not refuse the cancel of an order it did not see placed.
    token = gateway.token("desk-admin")
    status, body, _ = await gateway.call("POST", ORDERS, token,
                                         data={"side": "1", "amount": "1", "price": "0.2"})
    assert (status, body) == (503, UNAVAILABLE)
    status, body, _ = await gateway.call("POST", f"{ORDERS}/1/_cancel", token)
    assert (status, body) == (503, UNAVAILABLE)
    assert await requests_since(sim, before) == {
        "POST /v1/markets/{market}/orders": 1,
        "POST /v1/markets/{market}/orders/{order_id}/_cancel": 1,
    }
    assert (await sim.stats())["orders"] == {"placed": 0, "cancelled": 0}


@pytest.mark.parametrize("injected", [400, 404, 429, 500])
async def test_other_errors_are_not_retried(
    sim: RunningSimulator, start_gateway_for: StartGateway, injected: int
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=3, breaker_failures=1)
    await sim.set_faults(error_rate=1.0, error_status=injected)
    status, _, _ = await gateway.call("GET", BALANCE, gateway.token())
    assert status == injected
    assert await upstream_requests(sim) == {BALANCE_ROUTE: 1}
    assert await circuit(gateway) == "closed"


async def test_a_4xx_of_the_exchange_is_not_retried(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await gateway_with(sim, start_gateway_for, retries=3, breaker_failures=1)
    status, body, _ = await gateway.call("GET", "/v1/balance/history?coin_code=NOPE",
                                         gateway.token())
    assert (status, body) == (400, {"code": 1, "message": "invalid argument"})
    assert await upstream_requests(sim) == {"GET /v1/balance/history": 1}
    assert await circuit(gateway) == "closed"


# --- the circuit breaker -------------------------------------------------------------------------


async def open_circuit(sim: RunningSimulator, start_gateway_for: StartGateway) -> RunningGateway:
    """A gateway whose circuit opened after three 503s (each passed through) and no retries."""
    gateway = await gateway_with(sim, start_gateway_for, retries=0, breaker_failures=3,
                                 breaker_cooldown=0.5)
    await fill_markets_cache(gateway)
    await sim.set_faults(error_rate=1.0, error_status=503)
    for _ in range(3):
        assert (await gateway.call("GET", BALANCE, gateway.token()))[:2] == (503, UNAVAILABLE)
    return gateway


async def after_cooldown(gateway: RunningGateway) -> tuple[int, Any]:
    """The first call the breaker lets through once the cooldown is over (bounded wait)."""
    await asyncio.sleep(gateway.settings.upstream.breaker_cooldown)
    for _ in range(100):
        status, body, _ = await gateway.call("GET", BALANCE, gateway.token())
        if not (status == 503 and "error" in body):
            return status, body
        await asyncio.sleep(0.05)
    raise AssertionError("the breaker never let a probe through")


async def test_the_circuit_opens_and_calls_fail_fast(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await open_circuit(sim, start_gateway_for)
    for _ in range(5):
        status, body, headers = await gateway.call("GET", BALANCE, gateway.token())
        assert (status, body["error"]["code"]) == (503, "upstream_circuit_open")
        assert "next probe" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
    status, body, _ = await gateway.call("POST", ORDERS, gateway.token(),
                                         data={"side": "1", "amount": "1", "price": "0.2"})
    assert (status, body["error"]["code"]) == (503, "upstream_circuit_open")
    assert await balance_requests(sim) == 3
    assert "POST /v1/markets/{market}/orders" not in await upstream_requests(sim)
    assert await circuit(gateway) == "open"
    assert await metric(gateway, GAUGE) == 2


async def test_the_circuit_recovers_after_one_successful_probe(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await open_circuit(sim, start_gateway_for)
    await sim.set_faults(clear=True)
    status, body = await after_cooldown(gateway)
    assert status == 200, body
    assert await balance_requests(sim) == 4
    assert await circuit(gateway) == "closed"
    assert await metric(gateway, GAUGE) == 0
    assert (await gateway.call("GET", BALANCE, gateway.token()))[0] == 200


async def test_a_failed_probe_keeps_the_circuit_open(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await open_circuit(sim, start_gateway_for)
    assert await after_cooldown(gateway) == (503, UNAVAILABLE)
    status, body, _ = await gateway.call("GET", BALANCE, gateway.token())
    assert (status, body["error"]["code"]) == (503, "upstream_circuit_open")
    assert await balance_requests(sim) == 4
    assert await circuit(gateway) == "open"
    assert await metric(gateway, GAUGE) == 2


async def test_only_one_probe_reaches_the_exchange(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await open_circuit(sim, start_gateway_for)
    await sim.set_faults(clear=True, latency_ms=300)  # the probe is slow: the others come meanwhile
    await asyncio.sleep(gateway.settings.upstream.breaker_cooldown)
    for _ in range(100):
        answers = await asyncio.gather(
            *(gateway.call("GET", BALANCE, gateway.token()) for _ in range(5)))
        if any(status == 200 for status, _, _ in answers):
            break
        await asyncio.sleep(0.05)
    refused = [body["error"]["code"] for status, body, _ in answers if status != 200]
    assert refused == ["upstream_circuit_open"] * 4
    assert await balance_requests(sim) == 4
    assert await circuit(gateway) == "closed"
