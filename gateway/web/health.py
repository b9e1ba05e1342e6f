"""Operational endpoints: ``/healthz`` (the process answers), ``/readyz`` (it can serve: upstream
client and stores) and ``/metrics`` (Prometheus text of ``gateway.telemetry``)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import REVOCATIONS, TELEMETRY, UPSTREAM
from gateway.telemetry import PROMETHEUS_CONTENT_TYPE


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    checks = {
        "upstream_client": upstream.started,
        "revocation_store": request.app[REVOCATIONS].healthy,
    }
    ready = all(checks.values())
    # The circuit is shown, not checked: an exchange failure opens the circuit of every replica
    # at once, and all of them going unready together would turn an exchange hiccup into a full
    # outage (no replica left to answer fast with 503 + Retry-After, or to serve cached data).
    body = {"status": "ready" if ready else "not_ready", "checks": checks,
            "upstream_circuit": upstream.circuit_state.value}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[TELEMETRY].render_prometheus()
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
