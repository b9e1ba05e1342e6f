"""The simulator's ``/ws`` endpoint: handshake, read loop, poll and idle timers, fault knobs.

Owns the live sessions and the two timers. The read loop parses each frame and hands it to
``Methods``; a malformed frame (bad JSON, wrong envelope, any binary frame) ends the connection
without a reply, as Expie does. The poll timer reads the engine every ``push_interval`` seconds
and offers the resulting frames to the sessions' queues; it never awaits a client socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import WSMsgType, hdrs, web

from gateway.core.jsonrpc import SERVICE_UNAVAILABLE, MalformedFrame, parse_request
from simulator.config import SimConfig
from simulator.engine.exchange import Exchange
from simulator.errors import error_response
from simulator.faults import Faults
from simulator.ws.channels import Channels
from simulator.ws.methods import Methods
from simulator.ws.session import CLOSE_TIMEOUT, GOING_AWAY, Session

logger = logging.getLogger(__name__)

SUBPROTOCOL = "chat"
# Expie checks for idle connections once a minute; short test settings are checked sooner.
IDLE_CHECK_PERIOD = 60.0


class WsServer:
    def __init__(self, exchange: Exchange, config: SimConfig, faults: Faults) -> None:
        self._config = config
        self._faults = faults
        self._channels = Channels.create(exchange, config.ws)
        self._methods = Methods(exchange, config.ws, self._channels)
        self._sessions: dict[Session, None] = {}
        self._timers: list[asyncio.Task[None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /ws``: upgrade, then serve the connection until it ends."""
        if self._faults.refuse_ws:
            return error_response(503, SERVICE_UNAVAILABLE, "service unavailable")
        if not _accepts_subprotocol(request):
            return web.Response(status=400, text="unsupported websocket subprotocol")
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), autoping=False, compress=False, timeout=CLOSE_TIMEOUT,
            max_msg_size=self._config.ws.max_message_size,
        )
        await ws.prepare(request)
        session = Session(ws, request.transport)
        self._sessions[session] = None
        session.start()
        try:
            await self._serve(session)
        finally:
            self._forget(session)
            await session.finish()
        return ws

    async def _serve(self, session: Session) -> None:
        while session.open:
            message = await session.ws.receive()
            session.touch()
            if message.type is WSMsgType.TEXT:
                if not self._on_text(session, message.data):
                    return
                # Buffered frames are read without suspending: let other clients and the
                # timers run between requests of a client that sends in bursts.
                await asyncio.sleep(0)
            elif message.type is WSMsgType.PING:
                session.pong()
            elif message.type is WSMsgType.BINARY:
                session.hang_up()
                return
            elif message.type is not WSMsgType.PONG:
                return

    def _on_text(self, session: Session, text: str) -> bool:
        try:
            request = parse_request(text)
        except MalformedFrame:
            session.hang_up()
            return False
        self._methods.dispatch(session, request)
        return True

    async def start(self) -> None:
        self._timers = [
            asyncio.create_task(self._every(self._config.push_interval, self._poll),
                                name="sim-ws-poll"),
            asyncio.create_task(self._every(self._idle_check_period(), self._reap_idle),
                                name="sim-ws-idle"),
        ]

    async def close(self) -> None:
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        closing = [session.begin_close(GOING_AWAY, "server shutdown") for session in self._sessions]
        await asyncio.gather(*closing, return_exceptions=True)

    def drop_all(self) -> int:
        """Fault knob: drop every connection at once, without a close handshake."""
        sessions = list(self._sessions)
        for session in sessions:
            self._forget(session)
            session.abort()
        return len(sessions)

    def connection_count(self) -> int:
        return len(self._sessions)

    def subscription_counts(self) -> dict[str, dict[str, int]]:
        return self._channels.counts()

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session, None)
        self._channels.forget(session)

    @staticmethod
    async def _every(period: float, tick: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                tick()
            except Exception:
                logger.exception("websocket timer failed")

    def _poll(self) -> None:
        if not self._faults.pushes_stalled():
            self._channels.poll(time.monotonic())

    def _idle_check_period(self) -> float:
        return min(IDLE_CHECK_PERIOD, self._config.ws.keep_alive / 2)

    def _reap_idle(self) -> None:
        now, keep_alive = time.monotonic(), self._config.ws.keep_alive
        for session in list(self._sessions):
            if session.idle_for(now) > keep_alive:
                self._forget(session)
                session.hang_up()


def _accepts_subprotocol(request: web.Request) -> bool:
    """Without the header, no subprotocol; with it, the offered list must contain ours."""
    offers = request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
    if not offers:
        return True
    offered = {name.strip() for offer in offers for name in offer.split(",")}
    return SUBPROTOCOL in offered
