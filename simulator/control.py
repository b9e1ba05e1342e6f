"""Instrumentation under ``/_sim`` (not part of Expie): stats, fault knobs, deposits.

Guarded by the control token from the configuration. Tests and benchmarks use these to see what
the gateway sent and to make the exchange misbehave on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.core.decimals import parse_decimal, render
from simulator.engine.errors import EngineError
from simulator.errors import engine_error_response, error_response, unauthorized
from simulator.keys import CONFIG, COUNTERS, EXCHANGE, FAULTS, WS_SERVER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """Control token check and error rendering, per route: the REST hot path stays untouched."""

    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {request.app[CONFIG].control_token}":
            return unauthorized()
        try:
            return await handler(request)
        except BadControlRequest as exc:
            return error_response(400, 1, str(exc))
        except EngineError as exc:
            return engine_error_response(exc)

    return guarded_handler


class BadControlRequest(ValueError):
    """A control call's body is not what the endpoint takes; the message says which field."""


async def stats(request: web.Request) -> web.Response:
    ws = request.app[WS_SERVER]
    exchange = request.app[EXCHANGE]
    return web.json_response({
        "ws_connections": ws.connection_count(),
        "subscriptions": ws.subscription_counts(),
        "rest_requests": request.app[COUNTERS].snapshot(),
        "orders": {"placed": exchange.orders_placed, "cancelled": exchange.orders_cancelled},
    })


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAULTS].to_wire())


async def set_faults(request: web.Request) -> web.Response:
    """Apply the knobs present in the body; ``{"clear": true}`` first resets them all."""
    body = await _body(request)
    faults = request.app[FAULTS]
    if body.pop("clear", False) is True:
        faults.clear()
    if "latency_ms" in body:
        faults.latency = _number(body.pop("latency_ms"), "latency_ms", 0, 60_000) / 1000
    if "error_rate" in body:
        faults.error_rate = _number(body.pop("error_rate"), "error_rate", 0, 1)
    if "error_status" in body:
        faults.error_status = int(_number(body.pop("error_status"), "error_status", 400, 599))
    if "refuse_ws" in body:
        faults.refuse_ws = _flag(body.pop("refuse_ws"), "refuse_ws")
    if "stall_pushes_s" in body:
        faults.stall_pushes(_number(body.pop("stall_pushes_s"), "stall_pushes_s", 0, 3600))
    dropped = 0
    if _flag(body.pop("drop_ws", False), "drop_ws"):
        dropped = request.app[WS_SERVER].drop_all()
    if body:
        raise BadControlRequest(f"unknown field {sorted(body)[0]!r}")
    return web.json_response({**faults.to_wire(), "dropped_ws": dropped})


async def deposit(request: web.Request) -> web.Response:
    """Credit an account: ``{"account": name, "asset": "BTC", "amount": "1.5"}``."""
    body = await _body(request)
    accounts = {account.name: account for account in request.app[CONFIG].accounts}
    account = accounts.get(str(body.get("account")))
    if account is None:
        raise BadControlRequest("account: no such account")
    amount = parse_decimal(str(body.get("amount", "")))
    if amount is None or amount <= 0:
        raise BadControlRequest("amount: expected a positive decimal string")
    asset = str(body.get("asset"))
    exchange = request.app[EXCHANGE]
    business_id = body.get("business_id", exchange.next_business_id())
    if not isinstance(business_id, int) or isinstance(business_id, bool):
        raise BadControlRequest("business_id: expected an integer")
    exchange.deposit(account.user_id, asset, amount, business_id)
    total = exchange.balances.total(account.user_id, asset)
    return web.json_response({"status": "success", "balance": render(total)})


async def _body(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise BadControlRequest("body: expected a JSON object") from exc
    if not isinstance(body, dict):
        raise BadControlRequest("body: expected a JSON object")
    return body


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadControlRequest(f"{name}: expected a number from {low} to {high}")
    return float(value)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadControlRequest(f"{name}: expected true or false")
    return value


def setup_control_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/stats", guarded(stats))
    app.router.add_get("/_sim/faults", guarded(get_faults))
    app.router.add_post("/_sim/faults", guarded(set_faults))
    app.router.add_post("/_sim/deposit", guarded(deposit))
