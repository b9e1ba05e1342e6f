"""``/ws``: Expie's public JSON-RPC over WebSocket, served from the gateway's fan-out hub.

An existing Expie client changes only its URL and token. Authentication comes before anything
but ``server.ping``/``server.time``: the JWT in the ``Authorization`` header, ``?token=`` (for
browsers), or a first ``server.auth [token]`` call; a socket still unauthenticated after
``ws.auth_grace`` seconds is closed (4001). The token is checked again every
``ws.token_check_interval`` seconds: expired or revoked, the socket ends (4001, saying which).

Where Expie stays silent (an unknown method) or drops the connection (a malformed frame), the
gateway answers a JSON-RPC error and keeps the connection: code 4 "method not found", code 1
naming what is wrong with the frame. Limits per connection: inbound messages per second (code 3
"service unavailable" past it), frame size (close 1009), markets subscribed; per user: open
connections (refused before the upgrade with 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from aiohttp import WSMsgType, web

from gateway.core.jsonrpc import (
    METHOD_NOT_FOUND,
    REQUIRE_AUTHENTICATION,
    SERVICE_UNAVAILABLE,
    JsonValue,
    MalformedFrame,
    Request,
    encode_error,
    encode_result,
    parse_request,
)
from gateway.core.principal import Principal, Scope
from gateway.core.rpc_params import METHODS, InvalidParams, parse_call
from gateway.errors import GatewayError, InsufficientScope, RateLimited
from gateway.fanout.hub import Hub, RpcFailure
from gateway.keys import AUTHENTICATOR, FANOUT, SETTINGS, WS_USERS
from gateway.web.errors import error_response
from gateway.web.guard import request_id

logger = logging.getLogger(__name__)
AUTH_REJECTED = 11
UNAUTHENTICATED_CLOSE = 4001
PUBLIC_METHODS = frozenset({"server.ping", "server.time"})


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS].ws
    principal = await _upgrade_principal(request)
    if principal is not None and Scope.MARKET_READ not in principal.scopes:
        return error_response(InsufficientScope(Scope.MARKET_READ.value), request_id(request))
    if principal is not None:
        refusal = _over_user_limit(request.app[WS_USERS], principal,
                                   settings.max_connections_per_user)
        if refusal is not None:
            return error_response(refusal, request_id(request))
    socket = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes, autoping=True)
    await socket.prepare(request)
    connection = _Connection(request, socket, principal)
    try:
        await connection.serve()
    finally:
        await connection.end()
    return socket


async def _upgrade_principal(request: web.Request) -> Principal | None:
    """The caller named by the upgrade request (header or ``?token=``), if any and valid."""
    header = request.headers.get("Authorization")
    token = request.query.get("token")
    if header is None and token is None:
        return None
    try:
        return await request.app[AUTHENTICATOR].authenticate(header or f"Bearer {token}")
    except GatewayError:
        return None


def _over_user_limit(users: Counter[str], principal: Principal, limit: int) -> RateLimited | None:
    if users[principal.user_id] < limit:
        return None
    return RateLimited(f"user {principal.user_id} already has {limit} WebSocket connections open",
                       limit=limit, retry_after=1, reset_after=1, code="too_many_connections")


class _Connection:
    """One downstream socket: its caller, its message budget, its requests to the hub."""

    def __init__(
        self, request: web.Request, socket: web.WebSocketResponse, principal: Principal | None
    ) -> None:
        app = request.app
        self._settings = app[SETTINGS].ws
        self._authenticator = app[AUTHENTICATOR]
        self._hub: Hub = app[FANOUT]
        self._users: Counter[str] = app[WS_USERS]
        self._socket = socket
        self._token: str | None = None
        self.client = self._hub.client(socket, self._settings.queue_limit)
        self._window = (0.0, 0)
        self._watch: asyncio.Task[None] | None = None
        if principal is not None:
            self._authenticated(principal, self._bearer(request))

    async def serve(self) -> None:
        self._watch = asyncio.create_task(self._watch_token(), name="ws-token-watch")
        async for message in self._socket:
            if message.type is WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type is WSMsgType.BINARY:
                self._reply_error(None, 1, "invalid argument: frames must be text (JSON)")
            elif message.type is WSMsgType.ERROR:
                break

    async def end(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._hub.leave(self.client)
        await self.client.close(1000, "")
        if self.client.principal is not None:
            self._users[self.client.principal.user_id] -= 1
            if self._users[self.client.principal.user_id] <= 0:
                del self._users[self.client.principal.user_id]

    async def _handle(self, text: str) -> None:
        if not self._within_budget():
            limit = self._settings.max_messages_per_second
            self._reply_error(None, SERVICE_UNAVAILABLE,
                              f"service unavailable: more than {limit} messages per second")
            return
        try:
            request = parse_request(text)
        except MalformedFrame as exc:
            self._reply_error(None, 1, f"invalid argument: {exc}")
            return
        await self._dispatch(request)

    async def _dispatch(self, request: Request) -> None:
        method = request.method
        if method not in METHODS:
            self._reply_error(request.id, METHOD_NOT_FOUND)
        elif method in PUBLIC_METHODS:
            self._reply(request.id, "pong" if method == "server.ping" else int(time.time()))
        elif method == "server.auth":
            await self._auth(request)
        elif self.client.principal is None:
            self._reply_error(request.id, REQUIRE_AUTHENTICATION)
        else:
            await self._call(request)

    async def _call(self, request: Request) -> None:
        try:
            call = parse_call(request.method, request.params)
            result = await self._hub.call(self.client, request.method, call)
        except (InvalidParams, RpcFailure) as exc:
            self._reply_error(request.id, exc.code, exc.message)
            return
        self._reply(request.id, result)
        self._hub.after_reply(self.client, request.method)

    async def _auth(self, request: Request) -> None:
        token = request.params[0] if request.params else None
        if not isinstance(token, str) or not token:
            self._reply_error(request.id, 1, "invalid argument: server.auth takes [token]")
            return
        try:
            principal = await self._authenticator.authenticate(f"Bearer {token}")
        except GatewayError as exc:
            self._reply_error(request.id, AUTH_REJECTED, exc.message)
            return
        known = self.client.principal
        if known is not None and known.user_id != principal.user_id:
            self._reply_error(request.id, AUTH_REJECTED,
                              "this socket is authenticated as another user")
            return
        if Scope.MARKET_READ not in principal.scopes:
            self._reply_error(request.id, AUTH_REJECTED, "the token lacks the scope market:read")
            return
        refusal = None if self.client.principal is not None else _over_user_limit(
            self._users, principal, self._settings.max_connections_per_user)
        if refusal is not None:
            self._reply_error(request.id, AUTH_REJECTED, refusal.message)
            return
        self._authenticated(principal, f"Bearer {token}")
        self._reply(request.id, {"status": "success"})

    def _authenticated(self, principal: Principal, bearer: str | None) -> None:
        if self.client.principal is None:
            self._users[principal.user_id] += 1
        self.client.principal = principal
        self._token = bearer

    async def _watch_token(self) -> None:
        """Close an unauthenticated socket after the grace period; then recheck the token."""
        await asyncio.sleep(self._settings.auth_grace)
        if self.client.principal is None:
            await self._close(UNAUTHENTICATED_CLOSE, "not authenticated")
            return
        while not self._socket.closed:
            try:
                self.client.principal = await self._authenticator.authenticate(self._token)
            except GatewayError as exc:
                await self._close(UNAUTHENTICATED_CLOSE, exc.message)
                return
            if Scope.MARKET_READ not in self.client.principal.scopes:
                await self._close(UNAUTHENTICATED_CLOSE, "the token lacks market:read")
                return
            await asyncio.sleep(self._settings.token_check_interval)

    async def _close(self, code: int, reason: str) -> None:
        self._hub.leave(self.client)
        await self.client.close(code, reason)

    def _within_budget(self) -> bool:
        second = int(time.monotonic())
        start, count = self._window
        if start != second:
            self._window = (second, 1)
            return True
        self._window = (start, count + 1)
        return count < self._settings.max_messages_per_second

    def _reply(self, request_id: int | None, result: JsonValue) -> None:
        self.client.reply(encode_result(request_id, result))

    def _reply_error(self, request_id: int | None, code: int, message: str | None = None) -> None:
        self.client.reply(encode_error(request_id, code, message))

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        token = request.query.get("token")
        return header or (f"Bearer {token}" if token else None)
