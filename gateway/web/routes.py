"""The route table: every path and its guard (the exchange's paths are in ``exchange``)."""

from __future__ import annotations

import json

from aiohttp import hdrs, web

from gateway.core.principal import Scope
from gateway.errors import MethodNotAllowed, NotFound
from gateway.keys import OPENAPI_BODY
from gateway.web.access_log import logged
from gateway.web.admin import (
    acknowledge_state_loss,
    audit_records,
    list_kill_switches,
    set_kill_switch,
)
from gateway.web.auth_routes import issue_token, jwks, revoke
from gateway.web.edge import name_the_server
from gateway.web.exchange import EXCHANGE_ROUTES, exchange_handler
from gateway.web.guard import protected, public
from gateway.web.health import healthz, metrics, readyz
from gateway.web.openapi import (
    JWKS_PATH,
    METADATA_PATH,
    OPENAPI_PATH,
    TOKEN_PATH,
    oauth_metadata,
    openapi,
    openapi_document,
)
from gateway.web.orders import cancel_order, order_call, place_order
from gateway.web.ws import websocket

# Logged every one, as order calls are: what an admin did is what an operator looks for.
ADMIN_ROUTES = (
    ("POST", "/admin/tokens/revoke", revoke),
    ("POST", "/admin/kill-switch", set_kill_switch),
    ("GET", "/admin/kill-switch", list_kill_switches),
    ("GET", "/admin/audit", audit_records),
    ("POST", "/admin/state-loss/acknowledge", acknowledge_state_loss),
)


async def no_such_route(request: web.Request) -> web.Response:
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        if allowed and hdrs.METH_ANY not in allowed:
            methods = ", ".join(sorted(allowed))
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; "
                                   f"use {methods}")
    raise NotFound(f"no route {request.method} {request.path}")


def setup_routes(app: web.Application) -> None:
    app.on_response_prepare.append(name_the_server)
    router = app.router
    place, cancel = "/v1/markets/{market}/orders", "/v1/markets/{market}/orders/{order_id}/_cancel"
    router.add_post(place, logged(place, order_call("place", place_order), always=True))
    router.add_post(cancel, logged(cancel, order_call("cancel", cancel_order), always=True))
    for route in EXCHANGE_ROUTES:
        router.add_route(route.method, route.template, logged(
            route.template, protected(route.scope, exchange_handler(route)), always=False))
    router.add_post(TOKEN_PATH, logged(TOKEN_PATH, public(issue_token), always=True))
    router.add_get(JWKS_PATH, public(jwks), allow_head=False)
    app[OPENAPI_BODY] = json.dumps(openapi_document()).encode()
    router.add_get(OPENAPI_PATH, public(openapi), allow_head=False)
    router.add_get(METADATA_PATH, public(oauth_metadata), allow_head=False)
    for method, path, handler in ADMIN_ROUTES:
        router.add_route(method, path, logged(path, protected(Scope.ADMIN, handler),
                                              always=True))
    router.add_get("/ws", websocket, allow_head=False)
    router.add_get("/healthz", public(healthz), allow_head=False)
    router.add_get("/readyz", public(readyz), allow_head=False)
    router.add_get("/metrics", public(metrics), allow_head=False)
    router.add_route(hdrs.METH_ANY, "/{tail:.*}", public(no_such_route))
