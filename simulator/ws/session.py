"""One client connection's outbound side: a bounded queue drained by its own writer task.

Everything the server sends to a client (replies, pushes, pongs) goes through ``send``/``pong``,
which never wait: a fan-out offers the same encoded bytes to every session and moves on. A
client that lets its queue fill up is closed with 1008 "slow consumer" rather than allowed to
hold anyone else back. This module knows nothing about channels or JSON-RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from aiohttp import WSMsgType, web

OUTBOUND_LIMIT: Final = 1024
CLOSE_TIMEOUT: Final = 1.0
SLOW_CONSUMER: Final = 1008
GOING_AWAY: Final = 1001

Frame = tuple[WSMsgType, bytes]


class Session:
    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None,
        queue_size: int = OUTBOUND_LIMIT,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.open = True
        self.last_inbound = time.monotonic()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_all(), name="sim-ws-writer")

    def touch(self) -> None:
        self.last_inbound = time.monotonic()

    def idle_for(self, now: float) -> float:
        return now - self.last_inbound

    def send(self, data: bytes) -> None:
        """Queue one text frame; never waits."""
        self._offer((WSMsgType.TEXT, data))

    def pong(self) -> None:
        # Expie's server answers every ping with an empty pong, whatever the ping carried.
        self._offer((WSMsgType.PONG, b""))

    def _offer(self, frame: Frame) -> None:
        if not self.open:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.begin_close(SLOW_CONSUMER, "slow consumer")

    async def _write_all(self) -> None:
        try:
            while True:
                opcode, data = await self._queue.get()
                await self.ws.send_frame(data, opcode)
        except ConnectionError:
            self.open = False

    def begin_close(self, code: int, reason: str) -> asyncio.Task[None]:
        """Close with a close frame, in the background; idempotent."""
        if self._closer is None:
            self.open = False
            self._closer = asyncio.create_task(self._close(code, reason), name="sim-ws-close")
        return self._closer

    async def _close(self, code: int, reason: str) -> None:
        await self._stop_writer()
        # A client that stopped reading never lets the close frame drain: give up and abort.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()),
                                   CLOSE_TIMEOUT)
        self.abort()

    def hang_up(self) -> None:
        """End the connection the way Expie does on a bad frame or idleness: no close frame."""
        self.open = False
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once, discarding anything still buffered."""
        self.open = False
        if self._transport is not None:
            self._transport.abort()

    async def finish(self) -> None:
        """The connection is over: stop the writer and wait for a pending close to end."""
        self.open = False
        await self._stop_writer()
        if self._closer is not None:
            await self._closer

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
