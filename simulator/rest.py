"""The Expie REST API under ``/v1``: the reference's endpoints, shapes and field names.

Handlers parse the request, call the engine and render. Authentication, request counting, fault
injection and error rendering happen once, in the ``v1`` wrapper every route is registered with.
There is no app-wide middleware: aiohttp then skips its middleware chain, which is a large share
of a cheap request's cost (this API is the upstream of the gateway's benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from aiohttp import hdrs, web

from gateway.core.decimals import Style, render, truncate
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.engine.market import MarketState
from simulator.errors import INJECTED, engine_error_response, error_response, unauthorized
from simulator.keys import ACCOUNT, ACCOUNTS_BY_TOKEN, CONFIG, COUNTERS, EXCHANGE, FAULTS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_SOURCE = "expie.api.https"
DEFAULT_PAGE = 20
MAX_PAGE = 100
TICKER_TTL = 1.0


def v1(method: str, template: str, handler: Handler) -> Handler:
    """``handler`` behind request counting, fault injection, bearer auth and error rendering."""
    route = f"{method} {template}"

    async def v1_handler(request: web.Request) -> web.StreamResponse:
        app = request.app
        app[COUNTERS].count(route)
        latency = app[FAULTS].latency
        if latency:
            # A slow exchange still acts on a request it received: a client that stops
            # waiting (or a server that cancels the handlers of closed connections) does not
            # undo it. The body is read first (a lost connection fails later reads), and the
            # rest is shielded only when slow: a task per request would cost the fast path.
            await request.read()
            return await asyncio.shield(_answer_after(latency, request))
        return await answer(request)

    async def _answer_after(delay: float, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return await answer(request)

    async def answer(request: web.Request) -> web.StreamResponse:
        app = request.app
        faults = app[FAULTS]
        if faults.next_request_fails():
            code, message = INJECTED.get(faults.error_status, (2, "internal error"))
            return error_response(faults.error_status, code, message)
        account = app[ACCOUNTS_BY_TOKEN].get(_bearer(request))
        if account is None:
            return unauthorized()
        request[ACCOUNT] = account
        try:
            return await handler(request)
        except EngineError as exc:
            return engine_error_response(exc)

    return v1_handler


async def unknown_route(request: web.Request) -> web.Response:
    """Expie's "method not found" for any other ``/v1`` path: 405 when the path exists."""
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        if allowed and hdrs.METH_ANY not in allowed:
            return error_response(405, 4, "method not found")
    return error_response(404, 4, "method not found")


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() != "bearer":
        return ""
    return header[6:].strip()


def _json(body: object) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")


def _market(request: web.Request) -> MarketState:
    state = request.app[EXCHANGE].markets.get(request.match_info["market"])
    if state is None or not state.spec.enabled:
        raise web.HTTPNotFound(text=json.dumps({"code": 1, "message": "invalid argument"}),
                               content_type="application/json")
    return state


def _page(request: web.Request, default_limit: int = DEFAULT_PAGE) -> tuple[int, int]:
    limit = _integer(request.query.get("limit"), default_limit, 1, MAX_PAGE)
    offset = _integer(request.query.get("offset"), 0, 0, None)
    return limit, offset


def _integer(text: str | None, default: int, low: int, high: int | None) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    return int(text)


async def markets(request: web.Request) -> web.Response:
    return _json([_market_wire(state) for state in request.app[EXCHANGE].markets.values()])


def _market_wire(state: MarketState) -> dict[str, object]:
    spec = state.spec
    return {
        "name": spec.name,
        "stock": spec.stock,
        "money": spec.money,
        "stock_precision": spec.stock_precision,
        "money_precision": spec.money_precision,
        "order_min_vol": render(spec.order_min_vol),
        "market_order_min_money": render(spec.market_order_min_money),
        "maker_fee_rate": _json_number(spec.maker_fee_rate),
        "taker_fee_rate": _json_number(spec.taker_fee_rate),
        "enabled": spec.enabled,
        "market_order_enabled": spec.market_order_enabled,
    }


def _json_number(value: Decimal) -> int | float:
    """Fee rates are JSON numbers in Expie's /markets (the only non-string numbers it sends)."""
    return int(value) if value == value.to_integral_value() else float(value)


async def depth(request: web.Request) -> web.Response:
    return _json(_market(request).depth(10, Decimal(0)).to_wire())


async def ticker(request: web.Request) -> web.Response:
    state = _market(request)
    now = time.time()
    cached = state.rendered.get("ticker")
    if cached is not None and cached[0] == state.version and now - cached[1] < TICKER_TTL:
        return web.Response(body=cached[2], content_type="application/json")
    high, low = state.day_range(now)
    best_ask, best_bid = state.asks.best(), state.bids.best()
    body = json.dumps({
        "high": render(high),
        "low": render(low),
        "last": render(state.last_price),
        "ask": render(best_ask.price if best_ask else Decimal(0)),
        "bid": render(best_bid.price if best_bid else Decimal(0)),
    }).encode()
    state.rendered["ticker"] = (state.version, now, body)
    return web.Response(body=body, content_type="application/json")


async def place_order(request: web.Request) -> web.Response:
    state = _market(request)
    form = await request.post()
    side, amount, price = form.get("side"), form.get("amount"), form.get("price")
    if not isinstance(side, str) or not side.isdigit() or not isinstance(amount, str):
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    exchange, user = request.app[EXCHANGE], request[ACCOUNT].user_id
    if price is None:
        order = exchange.put_market(user, state.spec.name, int(side), amount, API_SOURCE)
    elif isinstance(price, str):
        order = exchange.put_limit(user, state.spec.name, int(side), amount, price, API_SOURCE)
    else:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    return _json(order.to_wire())


async def cancel_order(request: web.Request) -> web.Response:
    state = _market(request)
    order = request.app[EXCHANGE].cancel(
        request[ACCOUNT].user_id, state.spec.name, _order_id(request))
    return _json(order.to_wire())


def _order_id(request: web.Request) -> int:
    text = request.match_info["order_id"]
    if not text.isdigit():
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    return int(text)


async def pending_orders(request: web.Request) -> web.Response:
    state = _market(request)
    limit, offset = _page(request)
    orders = request.app[EXCHANGE].pending(request[ACCOUNT].user_id, state.spec.name)
    records = [order.to_wire() for order in orders[offset:offset + limit]]
    return _json({"records": records, "total": len(orders), "limit": limit, "offset": offset})


async def finished_orders(request: web.Request) -> web.Response:
    state = _market(request)
    limit, offset = _page(request)
    orders = request.app[EXCHANGE].finished(request[ACCOUNT].user_id, state.spec.name)
    records = [order.to_finished_wire() for order in orders[offset:offset + limit]]
    return _json({"records": records, "limit": limit, "offset": offset})


async def order_details(request: web.Request) -> web.Response:
    _market(request)
    limit, offset = _page(request)
    deals = request.app[EXCHANGE].order_deals(_order_id(request))
    records = [deal.to_wire() for deal in deals[offset:offset + limit]]
    return _json({"records": records, "limit": limit, "offset": offset})


async def balance_summary(request: web.Request) -> web.Response:
    exchange: Exchange = request.app[EXCHANGE]
    user = request[ACCOUNT].user_id
    rows = []
    for name, asset in sorted(request.app[CONFIG].assets.items()):
        available = truncate(exchange.balances.available(user, name), asset.prec_show)
        frozen = truncate(exchange.balances.frozen(user, name), asset.prec_show)
        rows.append(_balance_row(name, available, frozen, asset.min_deposit, asset.min_withdraw))
    return _json(rows)


def _balance_row(
    asset: str, available: Decimal, frozen: Decimal, min_deposit: Decimal, min_withdraw: Decimal
) -> dict[str, str]:
    """One coin of the summary; the wallet holds nothing outside the exchange here."""
    amounts = {
        "balance": available + frozen,
        "available_amount": available,
        "ex_trading_amount": available + frozen,
        "pending_deposit_amount": Decimal(0),
        "pending_withdraw_amount": Decimal(0),
        "escrow_amount": Decimal(0),
        "ex_available": available,
        "ex_freeze": frozen,
    }
    row = {"coin_code": asset, "min_deposit": render(min_deposit, Style.HISTORY),
           "min_withdraw": render(min_withdraw, Style.HISTORY)}
    for name, value in amounts.items():
        row[name] = row[f"{name}_str"] = render(value, Style.HISTORY)
    return row


async def balance_history(request: web.Request) -> web.Response:
    asset = request.query.get("coin_code", "")
    if asset not in request.app[CONFIG].assets:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    limit, offset = _page(request)
    rows = request.app[EXCHANGE].balances.history(request[ACCOUNT].user_id, asset)
    newest_first = rows[::-1][offset:offset + limit]
    return _json({"records": [row.to_wire() for row in newest_first],
                  "limit": limit, "offset": offset})


# Matched in this order: the hottest route first, fixed segments before ``{order_id}``.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/v1/markets/{market}/ticker", ticker),
    ("GET", "/v1/markets", markets),
    ("GET", "/v1/markets/{market}/depth", depth),
    ("POST", "/v1/markets/{market}/orders", place_order),
    ("POST", "/v1/markets/{market}/orders/{order_id}/_cancel", cancel_order),
    ("GET", "/v1/markets/{market}/orders/_pending", pending_orders),
    ("GET", "/v1/markets/{market}/orders/_finished", finished_orders),
    ("GET", "/v1/markets/{market}/orders/{order_id}", order_details),
    ("GET", "/v1/balance/summary", balance_summary),
    ("GET", "/v1/balance/history", balance_history),
)


def setup_routes(app: web.Application) -> None:
    for method, template, handler in ROUTES:
        app.router.add_route(method, template, v1(method, template, handler))
    app.router.add_route(hdrs.METH_ANY, "/v1/{tail:.*}", unknown_route)
