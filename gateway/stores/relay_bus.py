"""One replica's Redis pub/sub connection: the channels of the streams it follows, and a nudge.

Each channel has one listener. ``subscribed`` is called when Redis confirms a subscription —
the first time and again after every reconnect, since messages published while the connection
was down are lost: that is when a follower must resync from the snapshot (it is subscribed, so
nothing published after the snapshot can be missed). ``bus_lost`` is called on every listener
when the connection fails. Messages are handed over synchronously in arrival order; listeners
must not block.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.asyncio

from gateway.stores.redis_client import REDIS_ERRORS

logger = logging.getLogger(__name__)
_READ_TIMEOUT = 1.0


class BusListener(Protocol):
    def relayed(self, payload: bytes) -> None: ...

    def subscribed(self) -> None: ...

    def bus_lost(self) -> None: ...


class RelayBus:
    def __init__(self, client: redis.asyncio.Redis, *, retry_delay: float = 0.5) -> None:
        self._pubsub = client.pubsub()
        self._retry_delay = retry_delay
        self._listeners: dict[str, BusListener] = {}
        self._wanted = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._up = False

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="relay-bus")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        try:
            await self._pubsub.aclose()
        except REDIS_ERRORS:
            logger.debug("relay bus: the pub/sub connection did not close cleanly")

    async def listen(self, channel: str, listener: BusListener) -> None:
        """Subscribe ``listener`` to ``channel`` (sent by the reader, again until Redis takes
        it); its ``subscribed`` says when Redis confirmed."""
        self._listeners[channel] = listener
        self._wanted.set()

    async def stop_listening(self, channel: str) -> None:
        if self._listeners.pop(channel, None) is None:
            return
        try:
            await self._pubsub.unsubscribe(channel)
        except REDIS_ERRORS:
            # Resubscribed after a reconnect, maybe: its messages then find no listener.
            logger.debug("relay bus: unsubscribing %s failed", channel)

    async def _read(self) -> None:
        while True:
            if not self._listeners:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                missing = set(self._listeners) - {_name(name) for name in self._pubsub.channels}
                if missing:
                    await self._pubsub.subscribe(*sorted(missing))
                message = await self._pubsub.get_message(timeout=_READ_TIMEOUT)
            except REDIS_ERRORS as exc:
                self._lost(exc)
                await asyncio.sleep(self._retry_delay)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        listener = self._listeners.get(_name(message.get("channel")))
        kind, data = message.get("type"), message.get("data")
        if listener is None:
            return
        if kind == "message" and isinstance(data, bytes):
            listener.relayed(data)
        elif kind == "subscribe":
            if not self._up:
                logger.info("relay bus: subscribed")
            self._up = True
            listener.subscribed()

    def _lost(self, exc: BaseException) -> None:
        if self._up:
            logger.warning("relay bus: the Redis pub/sub connection failed (%s); reconnecting",
                           type(exc).__name__)
        self._up = False
        for listener in list(self._listeners.values()):
            listener.bus_lost()


def _name(channel: object) -> str:
    return channel.decode() if isinstance(channel, bytes) else str(channel)
