"""How the simulator's REST layer answers errors: an HTTP status and ``{"code", "message"}``.

Expie never documented its REST error format. The simulator assumes the engine's code and message
in the body, with a status that says what kind of failure it is (see the README's table).
"""

from __future__ import annotations

import json

from aiohttp import web

from simulator.engine.errors import EngineError, ErrorKind

STATUS_OF = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.INTERNAL_ERROR: 500,
    ErrorKind.SERVICE_UNAVAILABLE: 503,
    ErrorKind.BALANCE_NOT_ENOUGH: 422,
    ErrorKind.AMOUNT_TOO_SMALL: 422,
    ErrorKind.NO_ENOUGH_TRADER: 422,
    ErrorKind.ORDER_NOT_FOUND: 404,
    ErrorKind.USER_NOT_MATCH: 403,
    ErrorKind.REPEAT_UPDATE: 409,
    ErrorKind.BALANCE_UPDATE_NOT_ENOUGH: 422,
}

# What an injected HTTP failure says, by status: the closest engine code.
INJECTED = {
    500: (2, "internal error"),
    503: (3, "service unavailable"),
    504: (5, "service timeout"),
}


def error_response(status: int, code: int, message: str) -> web.Response:
    body = json.dumps({"code": code, "message": message})
    return web.Response(status=status, text=body, content_type="application/json")


def engine_error_response(error: EngineError, status: int | None = None) -> web.Response:
    return error_response(status or STATUS_OF[error.kind], error.code, error.message)


def unauthorized() -> web.Response:
    response = error_response(401, 6, "require authentication")
    response.headers["WWW-Authenticate"] = 'Bearer realm="expie"'
    return response
