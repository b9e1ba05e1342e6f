"""The HTTP edge below the routes: what aiohttp refuses itself answers as the gateway does.

aiohttp answers a request it cannot parse (a header over its size cap, control characters in a
header, a request line too long) or a handler that raised, in plain text, without a request id,
sometimes echoing the start of the offending line (a token) and logging a traceback each time.
``EdgeRequestHandler`` answers those with the gateway's JSON error instead (400, 414, 431, 500),
logs one line without the input, names no software version in ``Server``, and closes a
connection whose request head has not arrived within ``server.header_timeout`` (408): a head
that trickles in cannot hold a connection for ever. ``GatewayRunner`` is the ``AppRunner`` that
serves through it; the process, the demo and the tests all run the app with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    RequestTimeout,
    UriTooLong,
)
from gateway.keys import SETTINGS
from gateway.web.errors import error_response
from gateway.web.guard import new_request_id, request_id

logger = logging.getLogger(__name__)

SERVER_NAME = "expie-gateway"
# The longest request line (mostly the URL) and header line aiohttp reads. Distinct, so that a
# line too long can be told apart: a URL is a 414, a header a 431.
MAX_REQUEST_LINE = 4096
MAX_HEADER_LINE = 8190
MAX_HEADERS = 64
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection stays open


def refusal(status: int, exc: BaseException | None) -> GatewayError:
    """The gateway's error for what aiohttp refused; its message never quotes the input."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_REQUEST_LINE,):
            return UriTooLong(f"the request line is longer than {MAX_REQUEST_LINE} bytes")
        return HeadersTooLarge(f"a header line is longer than {MAX_HEADER_LINE} bytes")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return HeadersTooLarge(f"more than {MAX_HEADERS} headers")
    if isinstance(exc, InvalidHeader):
        return MalformedRequest("a header name or value holds characters HTTP does not allow")
    if status < 500:
        return MalformedRequest("the request is not valid HTTP/1.1")
    return InternalError("the gateway failed to answer this request; it has been logged")


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler with the gateway's errors and a deadline on request heads."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self._close_after_response = False

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._head_deadline is None:
            loop = asyncio.get_running_loop()
            self._head_deadline = loop.call_later(self._header_timeout, self._head_too_slow)
        super().data_received(data)

    def request_started(self) -> None:
        """The head of a request is in: its deadline no longer runs (the body has its own)."""
        self._in_request = True
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def close_after_response(self) -> None:
        """Close once the response is out, without reading the rest of the body first (aiohttp
        would linger reading it: a body that trickles in would hold the connection on)."""
        self._close_after_response = True

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_request = False
            if self._close_after_response:
                self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport is None or self._in_request:
            return
        error = RequestTimeout(f"the request head took longer than {self._header_timeout:g} s")
        self.transport.write(_raw_error(error))
        self.force_close()
        self.transport.close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error = refusal(status, exc)
        if error.status >= 500:
            logger.error("request failed: %s %s", request.method, request.path,
                         exc_info=exc is not None and (type(exc), exc, exc.__traceback__))
        else:
            logger.info("refused a request aiohttp could not parse: %s", error.message)
        response = error_response(error, request_id(request))
        response.headers[hdrs.SERVER] = SERVER_NAME
        response.force_close()
        return response


def _raw_error(error: GatewayError) -> bytes:
    """The error as a whole HTTP response, for a connection that has no request to answer."""
    rid = new_request_id()
    body = json.dumps({"error": {"code": error.code, "message": error.message,
                                 "request_id": rid}}).encode()
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nServer: {SERVER_NAME}\r\nX-Request-Id: {rid}\r\n\r\n")
    return head.encode() + body


class EdgeServer(web.Server):
    """aiohttp's server, its connections handled by ``EdgeRequestHandler``."""

    def __init__(self, app_server: web.Server, header_timeout: float) -> None:
        factory = app_server.request_factory

        def started_request(message: Any, payload: Any, protocol: RequestHandler, writer: Any,
                            task: Any) -> web.BaseRequest:
            if isinstance(protocol, EdgeRequestHandler):
                protocol.request_started()
            return factory(message, payload, protocol, writer, task)

        super().__init__(app_server.request_handler, request_factory=started_request,
                         handler_cancellation=app_server.handler_cancellation,
                         **app_server._kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                  **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``AppRunner`` serving through ``EdgeServer``, with the gateway's HTTP limits."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        limits = {"access_log": None, "keepalive_timeout": KEEPALIVE_TIMEOUT,
                  "max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_LINE,
                  "max_headers": MAX_HEADERS}
        super().__init__(app, **{**limits, **kwargs})

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()
        return EdgeServer(app_server, self.app[SETTINGS].server.header_timeout)


async def name_the_server(_request: web.Request, response: web.StreamResponse) -> None:
    """``Server: expie-gateway``: no software version for a scanner to match."""
    response.headers[hdrs.SERVER] = SERVER_NAME
