"""Rendering the gateway's own errors: ``{"error": {"code", "message", "request_id"}}``."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.errors import GatewayError


def error_response(error: GatewayError, request_id: str) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id,
                      **error.details()}}
    response = web.Response(status=error.status, text=json.dumps(body),
                            content_type="application/json")
    response.headers.update(error.headers())
    response.headers["X-Request-Id"] = request_id
    return response
