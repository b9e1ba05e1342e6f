"""The access log: one ``gateway.access`` line per call (market data sampled), per route.

Wrapped around each route's guard at registration (no app-wide middleware on the hot path): it
gives the request its id first (the guards use it, ``guard.request_id_of``), binds the id and
the route template to every line logged while it is handled, and when the response is ready
logs method, route, status, duration, user and request id. Order, admin and token calls are
logged every one; the others with the share ``logging.access_sample``. A line is built only when
INFO is on for ``gateway.access``.
"""

from __future__ import annotations

import logging
import random
import time

from aiohttp import web

from gateway.keys import PRINCIPAL, SETTINGS
from gateway.logs import bound_request
from gateway.web.guard import Handler, request_id_of

access = logging.getLogger("gateway.access")


def logged(template: str, handler: Handler, *, always: bool) -> Handler:
    """``handler`` with its access line (every call when ``always``, else sampled)."""

    async def logged_handler(request: web.Request) -> web.StreamResponse:
        if not access.isEnabledFor(logging.INFO):
            return await handler(request)
        started = time.perf_counter()
        rid = request_id_of(request)
        status = 500  # what aiohttp answers for an error no guard turned into a response
        with bound_request(rid, template):
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                share = request.app[SETTINGS].logging.access_sample
                if always or random.random() < share:  # a sample, not a secret
                    _line(request, rid, template, status, started)

    return logged_handler


def _line(request: web.Request, rid: str, template: str, status: int, started: float) -> None:
    principal = request.get(PRINCIPAL)
    access.info("%s %s %d", request.method, template, status, extra={
        "request_id": rid, "route": template, "method": request.method, "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "user": principal.user_id if principal is not None else None})
