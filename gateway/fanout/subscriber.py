"""One downstream client's outbound side: a bounded queue of shared frames and its writer task.

Owns the slow-consumer policy. ``offer`` is synchronous and O(1) (O(queue) once when the queue
overflows): the fan-out hands the same ``Frame`` (bytes encoded once per notification and view)
to every subscriber and moves on; only this subscriber's writer task ever awaits its socket.
When the queue is full:

- depth is conflated: the queued frames of that view are dropped and no frame of the view goes out
  until the writer, once the queue is back under its low-water mark, has sent a fresh ``clean=true``
  snapshot obtained from the ``resync`` callback (a client never applies a diff over a gap; with
  no snapshot to be had, the view stays silent until ``forget``);
- price, deals and replies are never dropped: queued depth is conflated to make room, and if that
  is not enough the client is closed with 1013 and a reason, and the events count it.

Frames go out with ``send_frame(data, TEXT)`` (public since aiohttp 3.11): the shared bytes are
written as a text frame without the per-client encode ``send_str`` would do.

This module knows nothing of JSON-RPC, books, markets or who subscribed to what, and never reads
from the socket: the connection's handler reads, and closes its subscriber when the peer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import WSMsgType

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

GOING_AWAY: Final = 1001
INTERNAL_ERROR: Final = 1011
TRY_AGAIN_LATER: Final = 1013
CLOSE_TIMEOUT: Final = 2.0
_MAX_REASON_BYTES: Final = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes


class Kind(enum.Enum):
    DEPTH = "depth"
    PRICE = "price"
    DEALS = "deals"
    REPLY = "reply"


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded text message (UTF-8 JSON), created once and offered to many subscribers.

    ``view`` names the depth view a ``DEPTH`` frame belongs to (any hashable key the hub
    chooses); other kinds have none. Carrying kind and view here keeps ``offer`` free of any
    per-subscriber allocation.
    """

    data: bytes
    kind: Kind
    view: Hashable | None = None

    def __post_init__(self) -> None:
        if (self.kind is Kind.DEPTH) != (self.view is not None):
            raise ValueError("a depth frame needs its view, and only a depth frame has one")


class OutboundSocket(Protocol):
    """What the writer needs of a socket; ``aiohttp.web.WebSocketResponse`` satisfies it."""

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None: ...

    async def close(self, *, code: int, message: bytes) -> object: ...


if TYPE_CHECKING:
    def _aiohttp_fits(ws: web.WebSocketResponse) -> OutboundSocket:
        return ws  # mypy proves the real socket still matches the protocol


class SubscriberEvents(Protocol):
    """Where a subscriber reports what metrics count; called on trouble only, never per frame."""

    def slow_consumer_closed(self) -> None: ...

    def depth_conflated(self) -> None: ...


class _NoEvents:
    def slow_consumer_closed(self) -> None:
        pass

    def depth_conflated(self) -> None:
        pass


Resync = Callable[[Hashable], Frame | None]
"""A fresh ``clean=true`` snapshot of a view; None leaves the view silent until ``forget``."""


def _no_snapshot(_view: Hashable) -> Frame | None:
    return None


@dataclass(slots=True)
class SubscriberStats:
    sent: int = 0
    conflated: int = 0  # depth frames dropped, queued or offered
    resyncs: int = 0


class Subscriber:
    """Starts its writer task at once, so it must be built inside a running event loop.

    Conflated views are resynced once the queue is down to a quarter of ``queue_limit``.
    ``resync`` runs in the writer task and must not call back into this subscriber.
    """

    def __init__(
        self, socket: OutboundSocket, *, queue_limit: int = 512,
        events: SubscriberEvents | None = None, name: str = "",
        resync: Resync = _no_snapshot, close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.name = name
        self.stats = SubscriberStats()
        self.close_code: int | None = None
        self.close_reason = ""
        self._socket = socket
        self._limit = queue_limit
        self._low_water = queue_limit // 4
        self._events: SubscriberEvents = events or _NoEvents()
        self._resync = resync
        self._close_timeout = close_timeout
        self._queue: deque[Frame] = deque()
        self._blocked: set[Hashable] = set()  # conflated views: nothing of them goes out...
        self._due: deque[Hashable] = deque()  # ...until the writer sends their snapshot
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._closer: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_all(), name=f"fanout-writer-{name}")

    @property
    def closed(self) -> bool:
        """True from the moment closing began: offers are refused from then on."""
        return self._closing

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` for this client without waiting; False when it will not be sent."""
        if self._closing:
            return False
        if frame.view is not None and frame.view in self._blocked:
            self.stats.conflated += 1
            return False
        if len(self._queue) >= self._limit and not self._make_room(frame):
            return False
        self._queue.append(frame)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def forget(self, view: Hashable) -> None:
        """The client left ``view``: drop its queued frames and any pending snapshot."""
        self._drop_view(view)
        self._blocked.discard(view)

    async def close(self, code: int, reason: str) -> None:
        """Stop the writer (queued frames are discarded) and close the socket; idempotent.

        The close goes on even if the caller is cancelled while waiting for it.
        """
        await asyncio.shield(self._begin_close(code, reason))

    async def wait_closed(self) -> None:
        """Until the writer has stopped and the socket is closed, whoever began closing."""
        await self._finished.wait()

    def _make_room(self, frame: Frame) -> bool:
        if frame.view is not None:
            self._conflate(frame.view)
            self.stats.conflated += 1
            return False
        for view in {queued.view for queued in self._queue if queued.view is not None}:
            self._conflate(view)
        if len(self._queue) < self._limit:
            return True
        behind = len(self._queue) + 1
        self._events.slow_consumer_closed()
        self._begin_close(TRY_AGAIN_LATER, f"client too slow: {behind} messages behind")
        return False

    def _conflate(self, view: Hashable) -> None:
        self._drop_view(view)
        self._blocked.add(view)
        self._due.append(view)
        self._events.depth_conflated()

    def _drop_view(self, view: Hashable) -> None:
        kept = deque(frame for frame in self._queue if frame.view != view)
        self.stats.conflated += len(self._queue) - len(kept)
        self._queue = kept

    async def _write_all(self) -> None:
        try:
            while True:
                frame = await self._next_frame()
                await self._socket.send_frame(frame.data, WSMsgType.TEXT)
                self.stats.sent += 1
        except ConnectionError:
            # The peer is gone: nothing more can be written, but the close still has to run.
            self._begin_close(GOING_AWAY, "connection lost")
        except Exception:
            logger.exception("writer of subscriber %r failed", self.name)
            self._begin_close(INTERNAL_ERROR, "internal error")

    async def _next_frame(self) -> Frame:
        while True:
            if self._due and len(self._queue) <= self._low_water:
                snapshot = self._take_snapshot()
                if snapshot is not None:
                    return snapshot
            elif self._queue:
                return self._queue.popleft()
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    def _take_snapshot(self) -> Frame | None:
        view = self._due.popleft()
        if view not in self._blocked:  # forgotten meanwhile
            return None
        # Taken and returned without yielding: every diff offered from now on follows it.
        snapshot = self._resync(view)
        if snapshot is not None:
            self._blocked.discard(view)
            self.stats.resyncs += 1
        return snapshot

    def _begin_close(self, code: int, reason: str) -> asyncio.Task[None]:
        if self._closer is None:
            self._closing = True
            self.close_code, self.close_reason = code, reason
            self._queue.clear()
            self._due.clear()
            self._closer = asyncio.get_running_loop().create_task(
                self._shut(code, reason), name=f"fanout-close-{self.name}")
        return self._closer

    async def _shut(self, code: int, reason: str) -> None:
        try:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            # A client that stopped reading never drains the close frame: bound the wait
            # (aiohttp drops the connection when its close is cancelled).
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(
                    self._socket.close(code=code, message=_reason_bytes(reason)),
                    self._close_timeout)
        finally:
            self._finished.set()


def _reason_bytes(reason: str) -> bytes:
    encoded = reason.encode()[:_MAX_REASON_BYTES]
    return encoded.decode(errors="ignore").encode()
