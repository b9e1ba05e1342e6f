"""Forwarding a request to the exchange: the caller's token is swapped for its account's.

The upstream path is rebuilt from the route template and the matched parameters (quoted), never
copied from the raw request line, so what reaches the exchange is exactly what was authorized.
The exchange's status and body come back unchanged.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from gateway.keys import ACCOUNT_TOKENS, PRINCIPAL, UPSTREAM
from gateway.web.bodies import PROXY_BODY_LIMIT, read_body
from gateway.web.guard import Handler


def forward_to(template: str) -> Handler:
    """A handler sending the request to ``template`` upstream, as the caller's account."""

    async def forward(request: web.Request) -> web.Response:
        path = template.format_map(
            {name: quote(value, safe="") for name, value in request.match_info.items()})
        query = request.rel_url.raw_query_string
        if query:
            path = f"{path}?{query}"
        body = await read_body(request, PROXY_BODY_LIMIT) if request.body_exists else None
        token = request.app[ACCOUNT_TOKENS][request[PRINCIPAL].account]
        answer = await request.app[UPSTREAM].send(
            request.method, path, token, body, request.headers.get("Content-Type"))
        response = web.Response(status=answer.status, body=answer.body)
        if answer.content_type:
            response.headers["Content-Type"] = answer.content_type
        return response

    return forward
