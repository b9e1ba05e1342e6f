"""Route guards: request ids, authentication, scope and market checks, and error rendering.

Every route is registered through ``public`` or ``protected`` rather than app-wide middlewares,
so aiohttp skips its middleware chain on the hot path. A ``GatewayError`` raised anywhere below
a guard becomes the gateway's JSON error with its status and headers.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from gateway.core.forwarded import client_address
from gateway.core.principal import Principal, Scope
from gateway.errors import Forbidden, GatewayError, InsufficientScope
from gateway.keys import AUTHENTICATOR, PRINCIPAL, REQUEST_ID, SETTINGS
from gateway.web.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
logger = logging.getLogger(__name__)
MAX_REQUEST_ID = 128


# Made ids: a random per-process prefix and a counter. Unique across replicas and restarts in
# practice, and far cheaper than a uuid4 per request (a getrandom system call each).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def request_id(request: web.BaseRequest) -> str:
    """The caller's ``X-Request-Id`` when it is sane, otherwise a new one."""
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return new_request_id()


def request_id_of(request: web.Request) -> str:
    """The request's id: the one given to it already (by the access log), or made now."""
    given: str | None = request.get(REQUEST_ID)
    if given is not None:
        return given
    made = request[REQUEST_ID] = request_id(request)
    return made


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def caller_address(request: web.Request) -> str | None:
    """The client's address: the peer's, or what trusted proxies say it is (``Forwarded``)."""
    return client_address(request.remote, request.headers.get(hdrs.FORWARDED),
                          request.headers.get(hdrs.X_FORWARDED_FOR),
                          request.app[SETTINGS].server.trusted_proxies)


def public(handler: Handler) -> Handler:
    async def public_handler(request: web.Request) -> web.StreamResponse:
        rid = request_id_of(request)
        try:
            response = await handler(request)
        except GatewayError as exc:
            return error_response(exc, rid)
        response.headers["X-Request-Id"] = rid
        return response

    return public_handler


async def authorize(request: web.Request, scope: Scope) -> Principal:
    """The caller, when its token verifies and holds ``scope`` (and the route's market, if any)."""
    principal = await authenticate(request)
    check_access(request, principal, scope)
    return principal


async def authenticate(request: web.Request) -> Principal:
    """The caller whose bearer token verifies; ``Unauthenticated`` otherwise."""
    return await request.app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"))


def check_access(request: web.Request, principal: Principal, scope: Scope) -> None:
    """``Forbidden`` unless ``principal`` holds ``scope`` and may use the route's market."""
    if scope not in principal.scopes:
        raise InsufficientScope(scope.value)
    market = request.match_info.get("market")
    if market is not None and not principal.may_trade(market):
        raise Forbidden(f"market {market} is not allowed for this user", code="market_not_allowed")


def protected(scope: Scope, handler: Handler) -> Handler:
    """``handler`` for callers whose token verifies and holds ``scope`` (and the market, if any)."""

    async def protected_handler(request: web.Request) -> web.StreamResponse:
        rid = request_id_of(request)
        try:
            request[PRINCIPAL] = await authorize(request, scope)
            response = await handler(request)
        except GatewayError as exc:
            return error_response(exc, rid)
        if "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = rid
        return response

    return protected_handler
