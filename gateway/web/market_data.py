"""Serving market data from the cache: the exchange's bytes, with ``X-Cache`` and ``Age``."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import ACCOUNT_TOKENS, MARKET_DATA, PRINCIPAL, REQUEST_ID
from gateway.services.market_data import Endpoint
from gateway.web.guard import Handler


def serve_cached(endpoint: Endpoint) -> Handler:
    async def cached(request: web.Request) -> web.Response:
        token = request.app[ACCOUNT_TOKENS][request[PRINCIPAL].account]
        answer = await request.app[MARKET_DATA].fetch(
            endpoint, request.match_info.get("market"), token)
        # All headers in one mapping: this is the hottest response the gateway writes.
        return web.Response(status=answer.status, body=answer.body, headers={
            "Content-Type": answer.content_type or "application/json",
            "X-Cache": answer.cache,
            "Age": str(answer.age),
            "X-Request-Id": request[REQUEST_ID],
        })

    return cached
