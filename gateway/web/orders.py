"""The order routes: place and cancel through the order desk, and the owner-filtered lists.

Place and cancel have their own guard (``order_call``): like ``protected``, but a refusal before
the desk is reached (no or bad token, missing scope, market not allowed, a malformed
``Idempotency-Key`` or order id) is audited too. Each call carries a ``CallContext``: request id,
trace id (from a W3C ``traceparent`` header, or a new one), client address and user agent.
"""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from gateway.core.principal import Scope
from gateway.core.wire import wire_integer
from gateway.errors import BadRequest, GatewayError
from gateway.keys import (
    ACCOUNT_TOKENS,
    ORDER_DESK,
    ORDER_VIEWS,
    PRINCIPAL,
    REQUEST_ID,
)
from gateway.services.call_context import CallContext
from gateway.services.order_desk import DeskAnswer
from gateway.services.order_views import Page
from gateway.web.bodies import ORDER_BODY_LIMIT, read_body
from gateway.web.errors import error_response
from gateway.web.guard import (
    Handler,
    authenticate,
    caller_address,
    check_access,
    request_id_of,
)
from gateway.web.proxy import forward_to

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_NO_TRACE = "0" * 32


def order_call(action: str, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        rid = request_id_of(request)
        try:
            # Known before its access is checked, so a refusal names who was refused.
            request[PRINCIPAL] = principal = await authenticate(request)
            check_access(request, principal, Scope.ORDERS_WRITE)
        except GatewayError as exc:
            await _refused(request, action, exc)
            return error_response(exc, rid)
        try:
            response = await handler(request)
        except GatewayError as exc:
            return error_response(exc, rid)
        response.headers["X-Request-Id"] = rid
        return response

    return guarded


async def place_order(request: web.Request) -> web.Response:
    context = call_context(request)
    key = await _idempotency_key(request, context, "place")
    try:
        body = await read_body(request, ORDER_BODY_LIMIT)
    except GatewayError as exc:
        await _refused(request, "place", exc)
        raise
    answer = await request.app[ORDER_DESK].place(
        context, request.match_info["market"], body, request.headers.get("Content-Type"), key)
    return _response(answer)


async def cancel_order(request: web.Request) -> web.Response:
    context = call_context(request)
    key = await _idempotency_key(request, context, "cancel")
    text = request.match_info["order_id"]
    market = request.match_info["market"]
    order_id = wire_integer(text)
    if order_id is None:
        error = BadRequest(f"order id {text[:32]!r} is not a number", code="bad_order_id")
        await request.app[ORDER_DESK].refused(context, "cancel", market, {"order_id": text[:32]},
                                              error, key)
        raise error
    answer = await request.app[ORDER_DESK].cancel(context, market, order_id, key)
    return _response(answer)


def owned_listing(template: str, *, pending: bool) -> Handler:
    """The pending or finished list: the caller's own orders, unless it is desk-wide."""
    forward = forward_to(template)

    async def listing(request: web.Request) -> web.StreamResponse:
        principal = request[PRINCIPAL]
        if principal.desk_wide:
            return await forward(request)
        page = Page.parse(request.query.get("limit"), request.query.get("offset"))
        views = request.app[ORDER_VIEWS]
        token = request.app[ACCOUNT_TOKENS][principal.account]
        list_of = views.pending if pending else views.finished
        answer = await list_of(principal, token, request.match_info["market"], page)
        return web.Response(status=answer.status, body=answer.body,
                            content_type=answer.content_type or "application/json")

    return listing


def owned_details(template: str) -> Handler:
    """The deals of one order: only its owner (or a desk-wide reader) may see them."""
    forward = forward_to(template)

    async def details(request: web.Request) -> web.StreamResponse:
        text = request.match_info["order_id"]
        order_id = wire_integer(text)
        if order_id is None:
            raise BadRequest(f"order id {text[:32]!r} is not a number", code="bad_order_id")
        await request.app[ORDER_DESK].require_owner(request[PRINCIPAL], order_id)
        return await forward(request)

    return details


def call_context(request: web.Request) -> CallContext:
    principal = request.get(PRINCIPAL)
    match = _TRACEPARENT.match(request.headers.get("traceparent", ""))
    trace_id = match.group(1) if match and match.group(1) != _NO_TRACE else secrets.token_hex(16)
    return CallContext(principal, request[REQUEST_ID], trace_id, caller_address(request),
                       request.headers.get("User-Agent"))


async def _idempotency_key(request: web.Request, context: CallContext, action: str) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        error = BadRequest(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} printable "
                           "ASCII characters", code="bad_idempotency_key")
        await request.app[ORDER_DESK].refused(context, action, request.match_info.get("market"),
                                              {}, error)
        raise error
    return key


async def _refused(request: web.Request, action: str, error: GatewayError) -> None:
    params = {"order_id": request.match_info["order_id"][:32]} if (
        "order_id" in request.match_info) else {}
    await request.app[ORDER_DESK].refused(
        call_context(request), action, request.match_info.get("market"), params, error,
        request.headers.get(IDEMPOTENCY_HEADER, "")[:MAX_IDEMPOTENCY_KEY] or None)


def _response(answer: DeskAnswer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    if answer.content_type:
        response.headers["Content-Type"] = answer.content_type
    return response
