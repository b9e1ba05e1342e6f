"""``/healthz`` (the process answers) and ``/readyz`` (it can serve: upstream client and stores)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import REVOCATIONS, UPSTREAM


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = {
        "upstream_client": request.app[UPSTREAM].started,
        "revocation_store": request.app[REVOCATIONS].healthy,
    }
    ready = all(checks.values())
    return web.json_response({"status": "ready" if ready else "not_ready", "checks": checks},
                             status=200 if ready else 503)
