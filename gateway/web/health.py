"""Operational endpoints: ``/healthz`` (the process answers), ``/readyz`` (it can serve: upstream
client and stores) and ``/metrics`` (Prometheus text of ``gateway.telemetry``)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import AUDIT_TRAIL, KILL_SWITCHES, REVOCATIONS, TELEMETRY, UPSTREAM
from gateway.telemetry import PROMETHEUS_CONTENT_TYPE


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    checks = {
        "upstream_client": upstream.started,
        "revocation_store": request.app[REVOCATIONS].healthy,
        "kill_switch_store": request.app[KILL_SWITCHES].healthy,
    }
    ready = all(checks.values())
    # The circuit is shown, not checked: an exchange failure opens the circuit of every replica
    # at once, and all of them going unready together would turn an exchange hiccup into a full
    # outage (no replica left to answer fast with 503 + Retry-After, or to serve cached data).
    # The audit spool is shown, not checked, for the same reason: a shared store that fails
    # fails for every replica, and reads need no audit.
    audit = request.app[AUDIT_TRAIL]
    body = {"status": "ready" if ready else "not_ready", "checks": checks,
            "upstream_circuit": upstream.circuit_state.value,
            "audit_spool": {"pending": audit.spooled, "dropped": audit.dropped}}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[TELEMETRY].render_prometheus()
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
