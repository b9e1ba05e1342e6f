"""One market's depth for every downstream client: one upstream subscription, one local book.

The book comes from ONE upstream depth subscription at ``(upstream_limit, "0")`` on its own
connection. Each distinct downstream view ``(limit, interval)`` is a ``ViewStream`` computed
from that book, encoded once per update and offered to every client of the view. A view the
book cannot give exactly (a coarse interval whose last bucket may hold levels deeper than the
book knows) gets its own upstream subscription at that very view instead: never a wrong book.

After the upstream connection drops, the book and every stream are reset, so when the feed has
resubscribed each client receives a ``clean=true`` snapshot before any diff. That snapshot
restarts the view at every client (``Client.restart``), including one whose conflated view found
nothing to resync with while the view was reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from gateway.core.depth_book import DepthView
from gateway.core.jsonrpc import JsonValue
from gateway.core.live_book import BookError, LocalBook, ViewStream
from gateway.fanout.client import Client, DepthKey
from gateway.fanout.subscriber import Frame, Kind
from gateway.upstream.feed import DepthFeed, FeedError
from gateway.ws_settings import WebSocketSettings

logger = logging.getLogger(__name__)
Clock = Callable[[], float]
_RETRY_INITIAL = 0.5
_RETRY_MAX = 10.0


@dataclass(eq=False)
class _Source:
    """An upstream depth subscription and the book it keeps."""

    book: LocalBook
    feed: DepthFeed | None = None


@dataclass(eq=False)
class _View:
    stream: ViewStream
    clients: set[Client] = field(default_factory=set)
    # Set when the shared book cannot give this view exactly: its own subscription.
    own: _Source | None = None
    own_start: asyncio.Task[None] | None = None


class MarketDepth:
    def __init__(
        self, market: str, settings: WebSocketSettings, url: str,
        session: aiohttp.ClientSession, clock: Clock,
    ) -> None:
        self.market = market
        self._settings = settings
        self._url = url
        self._session = session
        self._clock = clock
        self._shared = _Source(LocalBook(settings.upstream_depth_limit))
        self._views: dict[DepthKey, _View] = {}
        # Dedicated subscriptions being closed: referenced until done, awaited by ``close``.
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> bool:
        return self._shared.book.live

    @property
    def watched(self) -> bool:
        return any(view.clients for view in self._views.values())

    async def start(self) -> None:
        """Open the upstream subscription; raises ``FeedError`` (the caller rolls back)."""
        self._shared.feed = self._feed(self._settings.upstream_depth_limit, "0", self._shared)
        try:
            await self._shared.feed.start()
        except BaseException:
            self._shared.feed = None
            raise

    async def close(self) -> None:
        for view in list(self._views.values()):
            await self._close_own(view)
        self._views.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._shared.feed is not None:
            feed, self._shared.feed = self._shared.feed, None
            await feed.close()
        self._shared.book.reset()

    def join(self, client: Client, key: DepthKey) -> None:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = _View(ViewStream(
                key[0], key[1], key[2], self._settings.full_snapshot_every))
            self._refresh(key, view)
        view.clients.add(client)

    def leave(self, client: Client, key: DepthKey) -> None:
        view = self._views.get(key)
        if view is None:
            return
        view.clients.discard(client)
        client.forget(key)
        if not view.clients:
            del self._views[key]
            if view.own is not None or view.own_start is not None:
                task = asyncio.get_running_loop().create_task(self._close_own(view))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def snapshot(self, key: DepthKey) -> Frame | None:
        """A clean frame of the view now, for a late joiner or a client catching up."""
        view = self._views.get(key)
        data = view.stream.snapshot_frame() if view is not None else None
        return None if data is None else Frame(data, Kind.DEPTH, key)

    def query(self, limit: int, interval: Decimal) -> DepthView | None:
        """The view from the live book; None when it is not live or not exact."""
        return self._shared.book.view(limit, interval)

    def _feed(self, limit: int, interval: str, source: _Source) -> DepthFeed:
        def updated(clean: bool, body: dict[str, JsonValue], _market: str) -> None:
            self._apply(source, clean, body)

        def lost() -> None:
            source.book.reset()
            for view in self._views.values():
                if (view.own or self._shared) is source:
                    view.stream.reset()

        return DepthFeed(self._url, self._session, self.market, limit=limit, interval=interval,
                         on_update=updated, on_lost=lost, heartbeat=self._settings.heartbeat)

    def _apply(self, source: _Source, clean: bool, body: dict[str, JsonValue]) -> None:
        try:
            source.book.apply(clean, body)
        except BookError as exc:
            # Diffs cannot be applied to a book with a hole: it waits, not live (queries and REST
            # go to the exchange, views hold still), for the exchange's next clean snapshot.
            if clean or source.book.live:  # once, not for each diff that follows
                logger.warning("depth of %s: %s; waiting for the next clean snapshot",
                               self.market, exc)
            source.book.reset()
            return
        for key, view in list(self._views.items()):
            if (view.own or self._shared) is source:
                self._refresh(key, view)

    def _refresh(self, key: DepthKey, view: _View) -> None:
        """Bring ``view`` up to date from its book and offer the frame, if any, to its clients."""
        source = view.own or self._shared
        if not source.book.live:
            return
        limit, interval = key[1], view.stream.interval
        shown = source.book.view(limit, Decimal(0) if view.own else interval)
        if shown is None:
            self._go_own(key, view)
            return
        fresh = view.stream.current is None  # new or reset: this update is a clean snapshot
        data = view.stream.update(shown, self._clock())
        if data is None:
            return
        frame = Frame(data, Kind.DEPTH, key)
        for client in view.clients:
            if fresh:
                client.restart(frame)
            else:
                client.push(frame)

    def _go_own(self, key: DepthKey, view: _View) -> None:
        if view.own is not None:
            return
        own = view.own = _Source(LocalBook(key[1]))
        view.stream.reset()
        view.own_start = asyncio.get_running_loop().create_task(self._start_own(key, view, own))

    async def _start_own(self, key: DepthKey, view: _View, own: _Source) -> None:
        """Subscribe the view on its own, retrying while anyone still watches it."""
        delay = _RETRY_INITIAL
        while self._views.get(key) is view:
            own.feed = self._feed(key[1], key[2], own)
            try:
                await own.feed.start()
            except FeedError as exc:
                own.feed = None
                logger.warning("depth of %s: the subscription of view %s failed (%s); retrying",
                               self.market, key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            else:
                return

    async def _close_own(self, view: _View) -> None:
        if view.own_start is not None:
            view.own_start.cancel()
        if view.own is not None and view.own.feed is not None:
            await view.own.feed.close()
        view.own = None
