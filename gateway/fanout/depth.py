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

Every ``ws.verify_interval`` seconds the shared book is checked against the exchange's
``depth.query`` of the same view, on the subscription's own connection (``BookCheck`` decides).
A resync serves the query's answer as the book and restarts every view of it at every client
with a clean snapshot. The book the pushes patch is kept underneath, unchanged: the exchange's
next diffs are relative to what it last pushed, not to the answer, so the next push applies to
that book, which then is served again. A resubscription would not do: during a stall the
exchange hands a new subscriber its cached, equally stale snapshot.

In a cluster (``gateway.fanout.leadership``) the shared book has one of two sources. Leading, it
is the upstream subscription, and every step the book takes (an update, a loss, a resync, a
confirmation) goes to ``relay_out``. Following, there is no upstream subscription: ``apply``
takes the leader's steps, ``load`` its snapshot (``fields``), so the book, its views and their
frames are the leader's. Views with their own subscription stay this replica's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, cast

import aiohttp

from gateway.core.book_check import BookCheck
from gateway.core.depth_book import BookSide, DepthView, render_side
from gateway.core.jsonrpc import JsonValue
from gateway.core.live_book import BookError, LocalBook, ViewStream
from gateway.core.relay_order import RelayFormatError, relay_nowhere
from gateway.fanout.client import Client, DepthKey
from gateway.fanout.subscriber import Frame, Kind
from gateway.upstream.feed import DepthFeed, FeedError
from gateway.ws_settings import WebSocketSettings

logger = logging.getLogger(__name__)
Clock = Callable[[], float]
_RETRY_INITIAL = 0.5
_RETRY_MAX = 10.0


class BookEvents(Protocol):
    """Where a market's depth reports what metrics count; called on trouble only."""

    def live_book_resynced(self, market: str) -> None: ...


class _NoEvents:
    def live_book_resynced(self, market: str) -> None:
        pass


@dataclass(eq=False)
class _Source:
    """An upstream depth subscription and the book it keeps."""

    book: LocalBook
    feed: DepthFeed | None = None
    # The exchange's queried book, served after a resync until the next push arrives.
    override: LocalBook | None = None

    @property
    def served(self) -> LocalBook:
        return self.override if self.override is not None else self.book


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
        session: aiohttp.ClientSession, clock: Clock, events: BookEvents | None = None,
    ) -> None:
        self.market = market
        self._settings = settings
        self._url = url
        self._session = session
        self._clock = clock
        self._events: BookEvents = events or _NoEvents()
        self._shared = _Source(LocalBook(settings.upstream_depth_limit))
        self._check = BookCheck(confirm_after=settings.verify_confirm_after,
                                max_age=settings.max_book_age, now=clock())
        # Pushes applied to the shared book: a query answer overtaken by one says nothing.
        self._pushes = 0
        self._verifier: asyncio.Task[None] | None = None
        self._views: dict[DepthKey, _View] = {}
        # Dedicated subscriptions being closed: referenced until done, awaited by ``close``.
        self._closing: set[asyncio.Task[None]] = set()
        # Where the shared book's changes go while this replica leads the market (the relay);
        # True when it took one.
        self.relay_out: Callable[[str, JsonValue], bool] = relay_nowhere
        # Set while a relayed update is applied: its frames reach this replica's clients later.
        self._delivering_later = False

    @property
    def live(self) -> bool:
        return self._shared.served.live

    @property
    def age(self) -> int:
        """Whole seconds since the shared book was last confirmed (a push or a matching query)."""
        return self._check.age(self._clock())

    @property
    def watched(self) -> bool:
        return any(view.clients for view in self._views.values())

    @property
    def needed(self) -> bool:
        return self.watched

    async def use_upstream(self) -> None:
        """Hold the upstream subscription (a no-op when held); raises ``FeedError`` (the caller
        rolls back)."""
        if self._shared.feed is not None:
            return
        self.hold()  # a book the relay gave: every client restarts from the exchange's snapshot
        self._shared.feed = self._feed(self._settings.upstream_depth_limit, "0", self._shared)
        try:
            await self._shared.feed.start()
        except BaseException:
            self._shared.feed = None
            raise
        self._verifier = asyncio.get_running_loop().create_task(
            self._verify_every(self._settings.verify_interval), name=f"verify-{self.market}")

    async def use_relay(self) -> None:
        """Give the upstream subscription up: the book comes from the relay now."""
        await self._drop_upstream()
        self.hold()

    def hold(self) -> None:
        """No book until the relay's snapshot: views hold still, then restart clean."""
        self._shared.book.reset()
        self._shared.override = None
        for view in self._views.values():
            if view.own is None:
                view.stream.reset()

    def fields(self, everything: bool) -> dict[str, str]:
        """The shared book as the relay's snapshot holds it: the pushed book and the queried
        one served over it after a resync (``None`` when not live)."""
        return {"book": json.dumps([_wire(self._shared.book), _wire(self._shared.override)])}

    def load(self, fields: Mapping[str, str]) -> None:
        try:
            book, override = json.loads(fields["book"])
            self._shared.book.reset()
            if book is not None:
                self._shared.book.apply(True, book)
            queried = None
            if override is not None:
                queried = LocalBook(self._shared.book.upstream_limit)
                queried.apply(True, override)
        except (KeyError, ValueError, TypeError, BookError) as exc:
            self.hold()
            raise RelayFormatError(f"depth of {self.market}: {exc}") from exc
        self._shared.override = queried
        if self._shared.served.live:
            self._check.confirmed(self._clock())
        self._refresh_shared()

    def apply(self, kind: str, data: JsonValue) -> None:
        """A change the leader relayed: the same step its own book took."""
        if kind == "u" and isinstance(data, list) and len(data) == 2 \
                and isinstance(data[0], bool) and isinstance(data[1], dict):
            self._apply(self._shared, data[0], data[1])
        elif kind == "l":
            self.hold()
        elif kind == "r" and isinstance(data, dict):
            queried = LocalBook(self._shared.book.upstream_limit)
            try:
                queried.apply(True, data)
            except BookError as exc:
                logger.warning("depth of %s: unusable relayed resync: %s", self.market, exc)
                return
            self._serve_queried(queried, self._clock())
        elif kind == "c":
            self._check.confirmed(self._clock())

    async def close(self) -> None:
        for view in list(self._views.values()):
            await self._close_own(view)
        self._views.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self._drop_upstream()
        self._shared.book.reset()
        self._shared.override = None

    async def _drop_upstream(self) -> None:
        if self._verifier is not None:
            self._verifier.cancel()
            await asyncio.gather(self._verifier, return_exceptions=True)
            self._verifier = None
        if self._shared.feed is not None:
            feed, self._shared.feed = self._shared.feed, None
            await feed.close()

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
        """The view from the live book; None when it is not live, not exact, or unconfirmed
        for longer than ``ws.max_book_age`` (then the exchange is asked instead)."""
        if not self._check.servable(self._clock()):
            return None
        return self._shared.served.view(limit, interval)

    async def _verify(self) -> None:
        """Check the shared book against the exchange's ``depth.query`` once; resync on proof."""
        feed, book = self._shared.feed, self._shared.served
        if feed is None or not feed.connected or not book.live:
            return
        pushes = self._pushes
        try:
            answer = await feed.query()
        except FeedError as exc:
            # No answer confirms nothing: the book ages, and past max_book_age it is not served.
            logger.info("depth of %s: the check query failed: %s", self.market, exc)
            return
        if pushes != self._pushes or book is not self._shared.served or not book.live:
            return  # a push (or a reset) came meanwhile: the answer and the book differ in time
        queried = LocalBook(book.upstream_limit)
        try:
            queried.apply(True, answer if isinstance(answer, dict) else {})
        except BookError as exc:
            logger.warning("depth of %s: unusable check query answer: %s", self.market, exc)
            return
        now = self._clock()
        if _same_book(queried, book):
            self._check.confirmed(now)
            self.relay_out("c", None)
        elif self._check.mismatched(now):
            self._resync(queried, now)

    def _feed(self, limit: int, interval: str, source: _Source) -> DepthFeed:
        def updated(clean: bool, body: dict[str, JsonValue], _market: str) -> None:
            if source is self._shared and self.relay_out("u", [clean, body]):
                # The relay's write goes out first; this replica's clients get their frames on
                # the loop's next turn, so the other replicas' clients wait for Redis alone,
                # not for this replica's own fan-out too.
                self._delivering_later = True
                try:
                    self._apply(source, clean, body)
                finally:
                    self._delivering_later = False
            else:
                self._apply(source, clean, body)

        def lost() -> None:
            if source is self._shared:
                self.relay_out("l", None)
            source.book.reset()
            source.override = None
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
            source.override = None
            return
        # The pushes patch ``book``: once one has, it is the exchange's current book again.
        source.override = None
        if source is self._shared:
            self._pushes += 1
            self._check.confirmed(self._clock())
            self._refresh_shared()
            return
        for key, view in list(self._views.items()):
            if view.own is source:
                self._refresh(key, view)

    def _refresh_shared(self) -> None:
        for key, view in list(self._views.items()):
            if view.own is None:
                self._refresh(key, view)

    def _refresh(self, key: DepthKey, view: _View) -> None:
        """Bring ``view`` up to date from its book and offer the frame, if any, to its clients."""
        source = view.own or self._shared
        if not source.served.live:
            return
        limit, interval = key[1], view.stream.interval
        shown = source.served.view(limit, Decimal(0) if view.own else interval)
        if shown is None:
            self._go_own(key, view)
            return
        fresh = view.stream.current is None  # new or reset: this update is a clean snapshot
        data = view.stream.update(shown, self._clock())
        if data is None:
            return
        frame = Frame(data, Kind.DEPTH, key)
        if self._delivering_later:
            # The clients of the view now: one joining meanwhile starts from its own snapshot.
            asyncio.get_running_loop().call_soon(_offer, list(view.clients), frame, fresh)
        else:
            _offer(view.clients, frame, fresh)

    def _resync(self, queried: LocalBook, now: float) -> None:
        """Serve the exchange's answer as the book, and a clean snapshot of it to every client."""
        logger.warning("depth of %s: the live book disagrees with the exchange's depth.query "
                       "twice over %g s; resyncing it from the query", self.market,
                       self._settings.verify_confirm_after)
        self.relay_out("r", _wire(queried))
        self._events.live_book_resynced(self.market)
        self._serve_queried(queried, now)

    def _serve_queried(self, queried: LocalBook, now: float) -> None:
        self._shared.override = queried
        self._check.confirmed(now)
        for key, view in list(self._views.items()):
            if view.own is None:
                view.stream.reset()  # the next frame of the view is a clean snapshot
                self._refresh(key, view)

    async def _verify_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._verify()
            except Exception:
                logger.exception("depth of %s: checking the live book failed", self.market)

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


def _offer(clients: Iterable[Client], frame: Frame, fresh: bool) -> None:
    for client in clients:
        if fresh:
            client.restart(frame)
        else:
            client.push(frame)


def _wire(book: LocalBook | None) -> JsonValue:
    if book is None or not book.live:
        return None
    return {side.value: cast(JsonValue, render_side(book.levels(side))) for side in BookSide}


def _same_book(one: LocalBook, other: LocalBook) -> bool:
    return all(one.levels(side) == other.levels(side) for side in BookSide)
