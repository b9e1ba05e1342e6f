"""Reading request bodies: bounded in size and in time, the one way every route does it.

Each route reads at most its own limit (an order needs a few KB; 413 past it, before reading
when ``Content-Length`` says so) within ``server.body_timeout`` (408), so a body that trickles
in cannot hold a request. A JSON body is UTF-8 (RFC 8259 §8.1) whatever charset the request
declares; deep nesting, numbers past Python's digit limit and invalid bytes are a 400 naming the
body, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

from aiohttp import web

from gateway.core.orders import MAX_BODY_BYTES
from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout
from gateway.keys import SETTINGS
from gateway.web.edge import EdgeRequestHandler

ORDER_BODY_LIMIT: Final = MAX_BODY_BYTES
ADMIN_BODY_LIMIT: Final = 16_384
TOKEN_BODY_LIMIT: Final = 4096
PROXY_BODY_LIMIT: Final = 4096
# aiohttp's own cap (client_max_size): above every route's, so a route's limit always decides.
LARGEST_BODY: Final = max(ORDER_BODY_LIMIT, ADMIN_BODY_LIMIT, TOKEN_BODY_LIMIT, PROXY_BODY_LIMIT)
_CHUNK: Final = 16_384


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; ``PayloadTooLarge`` or ``RequestTimeout``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        _close_after_response(request)
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if not request.body_exists:
        return b""
    deadline = request.app[SETTINGS].server.body_timeout
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    _close_after_response(request)
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        _close_after_response(request)
        raise RequestTimeout(f"the body took longer than {deadline:g} s to arrive") from None
    return b"".join(chunks)


def _close_after_response(request: web.Request) -> None:
    """The rest of a refused body is not worth reading: the connection closes after the error."""
    if isinstance(request.protocol, EdgeRequestHandler):
        request.protocol.close_after_response()


async def json_object(request: web.Request, limit: int = ADMIN_BODY_LIMIT,
                      code: str = "bad_request") -> dict[str, object]:
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise BadRequest("body: expected a JSON object in UTF-8", code=code) from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object", code=code)
    return body
