"""Operational endpoints: ``/healthz`` (the process answers), ``/readyz`` (this replica takes
traffic) and ``/metrics`` (Prometheus text of ``gateway.telemetry``)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import (
    AUDIT_TRAIL,
    CLUSTER_STATE,
    KILL_SWITCHES,
    LIFECYCLE,
    REVOCATIONS,
    SETTLEMENTS,
    TELEMETRY,
    UPSTREAM,
)
from gateway.telemetry import PROMETHEUS_CONTENT_TYPE


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while this replica is started and not draining; 503 ``draining`` once SIGTERM came.

    The shared dependencies (Redis, the exchange, its circuit, the audit spool, the shared
    state: ``lost`` while Redis has lost what the replicas saw) are shown, not checked: they fail
    for every replica at once, and all of them leaving the Service together would turn a Redis or
    exchange outage into a full one, although cached market data and the fan-out still serve,
    and orders answer their own 503 with ``Retry-After``.
    """
    app = request.app
    upstream, audit = app[UPSTREAM], app[AUDIT_TRAIL]
    if app[LIFECYCLE].draining:
        status = "draining"
    elif not upstream.started:
        status = "starting"
    else:
        status = "ready"
    body = {
        "status": status,
        "dependencies": {
            "revocation_store": "ok" if app[REVOCATIONS].healthy else "unavailable",
            "kill_switch_store": "ok" if app[KILL_SWITCHES].healthy else "unavailable",
            "upstream_circuit": upstream.circuit_state.value,
            "shared_state": app[CLUSTER_STATE].status,
        },
        "audit_spool": {"pending": audit.spooled, "dropped": audit.dropped},
        "settlement_spool": {"pending": app[SETTLEMENTS].spooled,
                             "dropped": app[SETTLEMENTS].dropped},
    }
    return web.json_response(body, status=200 if status == "ready" else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[TELEMETRY].render_prometheus()
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
