"""The Expie reference's REST paths: the scope each needs, the query it takes, how it is served.

Before anything reaches the exchange or the cache, the request is checked here: only the query
parameters the reference defines (``limit``/``offset`` as bounded integers), and a market the
exchange lists (from the cached markets list) — so a bad call is a 400/404 from the gateway and
costs the exchange nothing. An order id is checked by the handler that reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from gateway.core.principal import Scope
from gateway.core.wire import MAX_PAGE_VALUE, wire_integer
from gateway.errors import BadRequest
from gateway.keys import ACCOUNT_TOKENS, MARKET_DATA, PRINCIPAL, READ_LIMITS
from gateway.services.market_data import Endpoint
from gateway.web.guard import Handler
from gateway.web.market_data import serve_cached
from gateway.web.orders import owned_details, owned_listing
from gateway.web.proxy import forward_to

PAGING = frozenset({"limit", "offset"})
INTEGER_PARAMETERS = PAGING


@dataclass(frozen=True, slots=True)
class ExchangeRoute:
    method: str
    template: str
    scope: Scope
    query: frozenset[str] = frozenset()
    cached: Endpoint | None = None
    # Builds the handler from the template; default: forward to the exchange unchanged.
    serve: Callable[[str], Handler] = forward_to


# Matched in this order: the hottest route first, fixed segments before ``{order_id}``. Placing
# and cancelling are the order desk's (``gateway.web.orders``), registered before these.
EXCHANGE_ROUTES = (
    ExchangeRoute("GET", "/v1/markets/{market}/ticker", Scope.MARKET_READ, cached=Endpoint.TICKER),
    ExchangeRoute("GET", "/v1/markets", Scope.MARKET_READ, cached=Endpoint.MARKETS),
    ExchangeRoute("GET", "/v1/markets/{market}/depth", Scope.MARKET_READ, cached=Endpoint.DEPTH),
    ExchangeRoute("GET", "/v1/markets/{market}/orders/_pending", Scope.ORDERS_READ, PAGING,
                  serve=partial(owned_listing, pending=True)),
    ExchangeRoute("GET", "/v1/markets/{market}/orders/_finished", Scope.ORDERS_READ, PAGING,
                  serve=partial(owned_listing, pending=False)),
    ExchangeRoute("GET", "/v1/markets/{market}/orders/{order_id}", Scope.ORDERS_READ, PAGING,
                  serve=owned_details),
    ExchangeRoute("GET", "/v1/balance/summary", Scope.BALANCE_READ),
    ExchangeRoute("GET", "/v1/balance/history", Scope.BALANCE_READ, PAGING | {"coin_code"}),
)


def exchange_handler(route: ExchangeRoute) -> Handler:
    serve = serve_cached(route.cached) if route.cached else route.serve(route.template)
    market_data = route.cached is not None

    async def checked(request: web.Request) -> web.StreamResponse:
        request.app[READ_LIMITS].admit(request[PRINCIPAL], market_data)
        check_query(request, route.query)
        market = request.match_info.get("market")
        if market is not None:
            token = request.app[ACCOUNT_TOKENS][request[PRINCIPAL].account]
            await request.app[MARKET_DATA].require_market(market, token)
        return await serve(request)

    return checked


def check_query(request: web.Request, allowed: frozenset[str]) -> None:
    query = request.query
    if not query:
        return
    for name in query:
        if name not in allowed:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {name!r} (this call takes: {accepted})",
                             code="bad_query")
        if len(query.getall(name)) > 1:
            raise BadRequest(f"query parameter {name!r} is repeated", code="bad_query")
        if name in INTEGER_PARAMETERS and wire_integer(query[name], MAX_PAGE_VALUE) is None:
            raise BadRequest(f"query parameter {name!r} must be an integer from 0 to "
                             f"{MAX_PAGE_VALUE}", code="bad_query")
