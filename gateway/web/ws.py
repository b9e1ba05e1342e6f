"""``/ws``: Expie's public JSON-RPC over WebSocket, served from the gateway's fan-out hub.

An existing Expie client changes only its URL and token. Authentication comes before anything
but ``server.ping``/``server.time``: the JWT in the ``Authorization`` header, ``?token=`` (for
browsers), or a first ``server.auth [token]`` call; a socket still unauthenticated after
``ws.auth_grace`` seconds is closed (4001). A token given on the upgrade that does not verify
is refused there (401, saying why) rather than ignored; one without ``market:read`` gets 403.
The token is checked again every ``ws.token_check_interval`` seconds: expired or revoked, the
socket ends (4001, saying which). The user's market allow-list applies to every call naming a
market (code 1 naming it).

Where Expie stays silent (an unknown method) or drops the connection (a malformed frame), the
gateway answers a JSON-RPC error and keeps the connection: code 4 "method not found", code 1
naming what is wrong with the frame (id null: it could not be read). Limits per connection:
inbound messages per second (code 3 "service unavailable" past it, the socket stays), frame size
(close 1009), markets subscribed (code 1); per user: open connections (refused before the upgrade
with 429, or code 11 on ``server.auth``).

Requests of one socket are handled one at a time, in order; only ``end`` (after the read loop)
takes the client out of the hub, so a subscription still in flight when the socket is closed
can never re-enter the hub after its client left.
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
from gateway.core.rpc_params import (
    METHODS,
    Call,
    DealsQuery,
    DepthCall,
    InvalidParams,
    MarketCall,
    MarketsCall,
    parse_call,
)
from gateway.errors import (
    GatewayError,
    InsufficientScope,
    NotFound,
    RateLimited,
    UpgradeRequired,
)
from gateway.fanout.hub import Hub, RpcFailure
from gateway.keys import (
    ACCOUNT_TOKENS,
    AUTHENTICATOR,
    CLOCK,
    FANOUT,
    MARKET_DATA,
    SETTINGS,
    WS_USERS,
)
from gateway.web.errors import error_response
from gateway.web.guard import request_id, request_id_of

logger = logging.getLogger(__name__)
AUTH_REJECTED = 11
UNAUTHENTICATED_CLOSE = 4001
PUBLIC_METHODS = frozenset({"server.ping", "server.time"})


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS].ws
    users = request.app[WS_USERS]
    try:
        principal = await _upgrade_principal(request)
    except GatewayError as exc:
        return error_response(exc, request_id(request))
    if principal is not None and Scope.MARKET_READ not in principal.scopes:
        return error_response(InsufficientScope(Scope.MARKET_READ.value), request_id(request))
    if principal is not None:
        refusal = _over_user_limit(users, principal, settings.max_connections_per_user)
        if refusal is not None:
            return error_response(refusal, request_id(request))
        # Counted before the upgrade awaits: concurrent upgrades cannot share the last slot.
        users[principal.user_id] += 1
    socket = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes, autoping=True)
    if not socket.can_prepare(request).ok:
        if principal is not None:
            _release(users, principal.user_id)
        return error_response(UpgradeRequired("GET /ws is a WebSocket: send Connection: Upgrade, "
                                              "Upgrade: websocket and Sec-WebSocket-Key"),
                              request_id(request))
    try:
        await socket.prepare(request)
    except BaseException:
        if principal is not None:
            _release(users, principal.user_id)
        raise
    connection = _Connection(request, socket, principal)
    opened = time.monotonic()
    logger.info("websocket opened", extra={
        "user": principal.user_id if principal is not None else None,
        "request_id": request_id_of(request)})
    try:
        await connection.serve()
    finally:
        await connection.end()
        signed_in = connection.client.principal
        logger.info("websocket closed", extra={
            "user": signed_in.user_id if signed_in is not None else None,
            "code": socket.close_code, "request_id": request_id_of(request),
            "duration_ms": round((time.monotonic() - opened) * 1000)})
    return socket


async def _upgrade_principal(request: web.Request) -> Principal | None:
    """The caller named by the upgrade request (header or ``?token=``); None if it names none.

    Raises the authenticator's ``GatewayError`` for a token that does not verify.
    """
    bearer = _bearer(request)
    if bearer is None:
        return None
    return await request.app[AUTHENTICATOR].authenticate(bearer)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    token = request.query.get("token")
    return header or (f"Bearer {token}" if token is not None else None)


def _over_user_limit(users: Counter[str], principal: Principal, limit: int) -> RateLimited | None:
    if users[principal.user_id] < limit:
        return None
    return RateLimited(f"user {principal.user_id} already has {limit} WebSocket connections open",
                       limit=limit, retry_after=1, reset_after=1, code="too_many_connections")


def _release(users: Counter[str], user_id: str) -> None:
    users[user_id] -= 1
    if users[user_id] <= 0:
        del users[user_id]


def _markets_named(call: Call) -> tuple[str, ...]:
    if isinstance(call, MarketsCall):
        return call.markets
    if isinstance(call, DepthCall | MarketCall | DealsQuery):
        return (call.market,)
    return ()


class _Connection:
    """One downstream socket: its caller, its message budget, its requests to the hub."""

    def __init__(
        self, request: web.Request, socket: web.WebSocketResponse, principal: Principal | None
    ) -> None:
        """``principal``, if given, is the upgrade's caller, already counted in ``WS_USERS``."""
        app = request.app
        self._settings = app[SETTINGS].ws
        self._authenticator = app[AUTHENTICATOR]
        self._clock = app[CLOCK]
        self._hub: Hub = app[FANOUT]
        self._market_data = app[MARKET_DATA]
        self._tokens = app[ACCOUNT_TOKENS]
        self._users: Counter[str] = app[WS_USERS]
        self._socket = socket
        self.client = self._hub.client(socket, self._settings.queue_limit)
        self.client.principal = principal
        self._token = _bearer(request) if principal is not None else None
        self._signed_in = asyncio.Event()
        if principal is not None:
            self._signed_in.set()
        self._window = (0, 0)
        self._watch: asyncio.Task[None] | None = None
        self._transport = request.transport

    async def serve(self) -> None:
        self._watch = asyncio.create_task(self._watch_token(), name="ws-token-watch")
        reaper = asyncio.create_task(self._reap(), name="ws-reaper")
        try:
            await self._read()
        finally:
            reaper.cancel()

    async def _reap(self) -> None:
        """Drop the connection once the subscriber has closed while the peer is still there:
        a client that stopped reading never completes the close handshake, and aiohttp would
        keep its connection (and this handler) open for good."""
        await self.client.subscriber.wait_closed()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type is WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type is WSMsgType.BINARY:
                self._handle_binary()
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
            _release(self._users, self.client.principal.user_id)

    async def _handle(self, text: str) -> None:
        try:
            request = parse_request(text)
        except MalformedFrame as exc:
            if self._within_budget():
                self._reply_error(None, 1, f"invalid argument: {exc}")
            else:
                self._reply_over_budget(None)
            return
        if not self._within_budget():
            self._reply_over_budget(request.id)
            return
        await self._dispatch(request)

    def _handle_binary(self) -> None:
        if self._within_budget():
            self._reply_error(None, 1, "invalid argument: frames must be text (JSON)")
        else:
            self._reply_over_budget(None)

    def _reply_over_budget(self, request_id: int | None) -> None:
        limit = self._settings.max_messages_per_second
        self._reply_error(request_id, SERVICE_UNAVAILABLE,
                          f"service unavailable: more than {limit} messages per second")

    async def _dispatch(self, request: Request) -> None:
        method = request.method
        if method not in METHODS:
            self._reply_error(request.id, METHOD_NOT_FOUND)
        elif method in PUBLIC_METHODS:
            self._reply(request.id, "pong" if method == "server.ping" else int(self._clock()))
        elif method == "server.auth":
            await self._auth(request)
        elif self.client.principal is None:
            self._reply_error(request.id, REQUIRE_AUTHENTICATION)
        else:
            await self._call(request)

    async def _call(self, request: Request) -> None:
        try:
            call = parse_call(request.method, request.params)
            self._check_allowed(call)
            await self._check_listed(call)
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
        refusal = self._auth_refusal(principal)
        if refusal is not None:
            self._reply_error(request.id, AUTH_REJECTED, refusal)
            return
        if self.client.principal is None:
            self._users[principal.user_id] += 1
        self.client.principal = principal
        self._token = f"Bearer {token}"
        self._signed_in.set()
        self._reply(request.id, {"status": "success"})

    def _auth_refusal(self, principal: Principal) -> str | None:
        known = self.client.principal
        if known is not None and known.user_id != principal.user_id:
            return "this socket is authenticated as another user"
        if Scope.MARKET_READ not in principal.scopes:
            return "the token lacks the scope market:read"
        if known is None:
            over = _over_user_limit(self._users, principal,
                                    self._settings.max_connections_per_user)
            return None if over is None else over.message
        return None

    def _check_allowed(self, call: Call) -> None:
        """Code 1 naming the first market of ``call`` outside the user's allow-list."""
        principal = self.client.principal
        for market in _markets_named(call):
            if principal is not None and not principal.may_trade(market):
                raise RpcFailure(1, f"invalid argument: market {market} is not allowed for "
                                    "this user")

    async def _check_listed(self, call: Call) -> None:
        """Code 1 naming the first market of ``call`` the exchange does not list (Expie would
        answer "success" and then nothing, and the gateway would hold a useless subscription)."""
        principal = self.client.principal
        if principal is None:
            return
        token = self._tokens[principal.account]
        for market in _markets_named(call):
            try:
                await self._market_data.require_market(market, token)
            except NotFound:
                raise RpcFailure(1, f"invalid argument: unknown market {market}") from None
            except GatewayError:
                raise RpcFailure(SERVICE_UNAVAILABLE, "service unavailable: the markets list "
                                 "cannot be read now") from None

    async def _watch_token(self) -> None:
        """Close a socket still unauthenticated after the grace period; then recheck the token."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signed_in.wait(), self._settings.auth_grace)
        if self.client.principal is None:
            await self.client.close(UNAUTHENTICATED_CLOSE, "not authenticated")
            return
        while not self._socket.closed:
            reason = await self._recheck()
            if reason is not None:
                await self.client.close(UNAUTHENTICATED_CLOSE, reason)
                return
            await asyncio.sleep(self._settings.token_check_interval)

    async def _recheck(self) -> str | None:
        """Why the socket's token no longer holds, or None. A token that ``server.auth``
        replaced while this check awaited is not held against the socket."""
        token = self._token
        try:
            principal = await self._authenticator.authenticate(token)
        except GatewayError as exc:
            return exc.message if token == self._token else None
        if token != self._token:
            return None
        self.client.principal = principal
        return None if Scope.MARKET_READ in principal.scopes else "the token lacks market:read"

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
