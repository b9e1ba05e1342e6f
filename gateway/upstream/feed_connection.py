"""One upstream WebSocket connection to Expie's ``/ws`` that stays up, and the feed errors.

Owns the socket's life: connect, hand the owner a fresh connection (``on_connected``, where it
resubscribes), read frames, match replies to requests by id, pass notifications on in arrival
order (``on_push``), ping with ``server.ping`` every ``heartbeat`` seconds, and on any failure or
drop tell the owner (``on_disconnected``) and reconnect after an exponential backoff with full
jitter. It knows no channel: which subscriptions a connection carries is the owner's business.

Pushes that arrive while ``on_connected`` runs are held and delivered after it returns, so an
owner never sees an update for a subscription it has not finished making. A hook that raises
ends the connection and the usual reconnect follows: a resubscription always starts with a full
snapshot, which heals whatever the failed hook left half done.

Errors (the only ones this package's feeds raise; they are not ``GatewayError``s, the caller
renders them, e.g. as a JSON-RPC error object):

- ``FeedError(code, message)``: the exchange answered with an error (its code and message), or
  did not answer in time (``SERVICE_TIMEOUT``).
  - ``FeedUnavailable``: no connection (``SERVICE_UNAVAILABLE``); requests are never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import TypedDict

import aiohttp
from aiohttp import WSMsgType

from gateway.core.jsonrpc import INTERNAL_ERROR, SERVICE_TIMEOUT, SERVICE_UNAVAILABLE, JsonValue

logger = logging.getLogger(__name__)

PushHook = Callable[[str, list[JsonValue]], None]
ConnectedHook = Callable[[], Awaitable[None]]
LostHook = Callable[[], None]

# Exponents past this already exceed any sane backoff_max; it keeps 2**n from overflowing a float.
_MAX_DOUBLINGS = 30
_CLOSE_TIMEOUT = 1.0


class FeedError(Exception):
    """The exchange refused a request (its JSON-RPC ``code`` and ``message``) or timed out."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message

    @classmethod
    def from_wire(cls, error: JsonValue) -> FeedError:
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            if isinstance(code, int) and isinstance(message, str):
                return cls(code, message)
        return cls(INTERNAL_ERROR, f"malformed error object from the exchange: {error!r}")


class FeedUnavailable(FeedError):
    """There is no upstream connection right now; nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(SERVICE_UNAVAILABLE, message)


class FeedOptions(TypedDict, total=False):
    """The tuning of a ``FeedConnection``; feeds pass these through unchanged."""

    heartbeat: float
    backoff_initial: float
    backoff_max: float
    request_timeout: float
    random: Callable[[], float]


@dataclass(eq=False)
class _Link:
    """One live socket and the requests waiting for its replies."""

    ws: aiohttp.ClientWebSocketResponse
    pending: dict[int, asyncio.Future[JsonValue]] = field(default_factory=dict)
    alive: bool = True

    def fail_pending(self, error: FeedError) -> None:
        self.alive = False
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()


class FeedConnection:
    def __init__(
        self, url: str, session: aiohttp.ClientSession, *, name: str,
        on_push: PushHook | None = None, on_connected: ConnectedHook | None = None,
        on_disconnected: LostHook | None = None, heartbeat: float = 10.0,
        backoff_initial: float = 0.25, backoff_max: float = 10.0, request_timeout: float = 5.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        """``session`` is borrowed (the caller closes it); ``random`` returns floats in [0, 1)."""
        self._url, self._session, self.name = url, session, name
        self._on_push = on_push or _ignore_push
        self._on_connected = on_connected or _nothing_to_do
        self._on_disconnected = on_disconnected or _nothing_lost
        self._heartbeat, self._request_timeout = heartbeat, request_timeout
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._random = random
        self._ids = count(1)
        self._link: _Link | None = None
        self._ready = False
        self._held: list[tuple[str, list[JsonValue]]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._outcome: asyncio.Future[FeedError | None] | None = None
        self.connects = 0

    @property
    def connected(self) -> bool:
        """Up, and ``on_connected`` has finished for this connection."""
        return self._ready and self._link is not None and self._link.alive

    @property
    def reconnects(self) -> int:
        """Connections made ready after the first one (for metrics)."""
        return max(0, self.connects - 1)

    def start(self) -> None:
        """Begin connecting in the background; idempotent. A closed connection stays closed."""
        if self._task is None and not self._stopping:
            self._outcome = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name=f"feed-{self.name}")

    async def wait_ready(self) -> None:
        """Until this connection is ready; the next attempt that fails raises its error.

        Unbounded: callers wrap it in ``asyncio.timeout``.
        """
        if self.connected:
            return
        if self._outcome is None or self._stopping:
            raise FeedUnavailable(f"{self.name}: the feed is not running")
        # Shielded: a waiter that gives up must not cancel the outcome other waiters share.
        error = await asyncio.shield(self._outcome)
        if error is not None:
            raise error

    async def close(self) -> None:
        """Stop for good: end the socket and the background task, fail waiting requests."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._settle(FeedUnavailable(f"{self.name}: the feed was closed"))

    async def request(self, method: str, params: Sequence[JsonValue]) -> JsonValue:
        """Send one call and return its ``result``; an error reply raises it as ``FeedError``."""
        link = self._link
        if link is None or not link.alive:
            raise FeedUnavailable(f"{self.name}: not connected to the exchange")
        request_id = next(self._ids)
        future: asyncio.Future[JsonValue] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        frame = {"method": method, "params": list(params), "id": request_id}
        try:
            await link.ws.send_str(json.dumps(frame, separators=(",", ":")))
            async with asyncio.timeout(self._request_timeout):
                return await future
        except TimeoutError as exc:
            raise FeedError(SERVICE_TIMEOUT, f"{self.name}: no reply to {method} within "
                                             f"{self._request_timeout:g} s") from exc
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise FeedUnavailable(f"{self.name}: the connection failed while sending") from exc
        finally:
            link.pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a reply that lost the race is not an error

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            was_ready = await self._attempt()
            failures = 0 if was_ready else failures + 1
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        ceiling = self._backoff_initial * 2.0 ** min(failures, _MAX_DOUBLINGS)
        return self._random() * min(self._backoff_max, ceiling)

    async def _attempt(self) -> bool:
        """One connection from handshake to loss; True if it became ready."""
        try:
            ws = await self._open()
        except FeedUnavailable as exc:
            logger.warning("%s", exc)
            self._settle(exc)
            return False
        link = self._link = _Link(ws)
        try:
            return await self._serve(link)
        finally:
            was_ready, self._ready, self._link = self._ready, False, None
            link.fail_pending(FeedUnavailable(f"{self.name}: the connection was lost"))
            await _shut(ws)
            if was_ready and not self._stopping:
                self._lost()

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        timeout = aiohttp.ClientWSTimeout(ws_close=min(_CLOSE_TIMEOUT, self._request_timeout))
        try:
            async with asyncio.timeout(self._request_timeout):
                return await self._session.ws_connect(self._url, timeout=timeout)
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise FeedUnavailable(f"{self.name}: cannot connect to the exchange: "
                                  f"{_describe(exc)}") from exc

    async def _serve(self, link: _Link) -> bool:
        reader = asyncio.create_task(self._read(link), name=f"feed-{self.name}-reader")
        try:
            if not await self._handshake():
                return False
            await self._keep_alive(link, reader)
            return True
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _handshake(self) -> bool:
        """Run the owner's ``on_connected``, then release the pushes held meanwhile."""
        self._held = []
        try:
            await self._on_connected()
            held, self._held = self._held, []
            for method, params in held:
                self._on_push(method, params)
        except FeedError as exc:
            logger.warning("%s: setting up the connection failed: %s", self.name, exc)
            self._settle(exc)
            return False
        except Exception:
            logger.exception("%s: setting up the connection failed", self.name)
            self._settle(FeedUnavailable(f"{self.name}: setting up the connection failed"))
            return False
        self._ready = True
        self.connects += 1
        self._settle(None)
        return True

    async def _keep_alive(self, link: _Link, reader: asyncio.Task[None]) -> None:
        """Until the reader ends, or a ``server.ping`` goes unanswered."""
        while link.alive:
            done, _ = await asyncio.wait({reader}, timeout=self._heartbeat)
            if done:
                return
            try:
                await self.request("server.ping", [])
            except FeedError as exc:
                logger.warning("%s: heartbeat failed, reconnecting: %s", self.name, exc)
                return

    async def _read(self, link: _Link) -> None:
        try:
            while True:
                message = await link.ws.receive()
                if message.type is WSMsgType.TEXT:
                    self._on_text(link, message.data)
                elif message.type in _ENDS:
                    return
        except Exception:
            logger.exception("%s: a notification handler failed, reconnecting", self.name)
        finally:
            link.fail_pending(FeedUnavailable(f"{self.name}: the connection was lost"))

    def _on_text(self, link: _Link, text: str) -> None:
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            logger.warning("%s: ignoring a frame that is not JSON", self.name)
            return
        if not isinstance(frame, dict):
            return
        frame_id = frame.get("id")
        if frame_id is None:
            method, params = frame.get("method"), frame.get("params")
            if isinstance(method, str) and isinstance(params, list):
                self._deliver(method, params)
        elif isinstance(frame_id, int):
            future = link.pending.get(frame_id)
            if future is not None and not future.done():
                _answer(future, frame)

    def _deliver(self, method: str, params: list[JsonValue]) -> None:
        if self._ready:
            self._on_push(method, params)
        else:
            self._held.append((method, params))

    def _lost(self) -> None:
        try:
            self._on_disconnected()
        except Exception:
            logger.exception("%s: the disconnect handler failed", self.name)

    def _settle(self, error: FeedError | None) -> None:
        """Report how an attempt ended to ``wait_ready``, and arm for the next one."""
        outcome = self._outcome
        if outcome is not None and not outcome.done():
            outcome.set_result(error)
        if not self._stopping:
            self._outcome = asyncio.get_running_loop().create_future()


_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


def _answer(future: asyncio.Future[JsonValue], frame: dict[str, JsonValue]) -> None:
    error = frame.get("error")
    if error is None:
        future.set_result(frame.get("result"))
    else:
        future.set_exception(FeedError.from_wire(error))


async def _shut(ws: aiohttp.ClientWebSocketResponse) -> None:
    # A dead peer never answers the close frame: the ws_close timeout bounds the wait.
    with contextlib.suppress(TimeoutError, OSError, aiohttp.ClientError):
        await ws.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused with HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _ignore_push(method: str, params: list[JsonValue]) -> None:
    pass


async def _nothing_to_do() -> None:
    pass


def _nothing_lost() -> None:
    pass
