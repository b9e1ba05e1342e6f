"""The upstream WebSocket feeds against the simulator over loopback sockets.

The simulator's stats prove what the feeds subscribed upstream; its fault knobs drop and refuse
connections. A dead peer (accepts, never answers) is a tiny local aiohttp server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.core.depth_book import BookSide, Level, apply_side
from gateway.core.jsonrpc import INVALID_ARGUMENT, JsonValue
from gateway.upstream.feed import (
    DepthFeed,
    FeedConnection,
    FeedError,
    FeedUnavailable,
    TickerFeed,
)
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

MARKET = "BCCBTC"
LIMIT = 100
SELL, BUY = 1, 2
WAIT = 5.0
FAST: dict[str, Any] = {"backoff_initial": 0.02, "backoff_max": 0.2, "request_timeout": 2.0}

Book = dict[BookSide, tuple[Level, ...]]


def levels(changes: Any, side: BookSide) -> list[Level]:
    return [(Decimal(price), Decimal(amount)) for price, amount in changes.get(side.value, [])]


class BookWatcher:
    """What a fan-out owner does with a depth feed: rebuild on clean, apply diffs otherwise."""

    def __init__(self) -> None:
        self.book: Book = dict.fromkeys(BookSide, ())
        self.cleans: list[bool] = []
        self.lost = 0

    def on_update(self, clean: bool, changes: dict[str, JsonValue], market: str) -> None:
        assert market == MARKET
        self.cleans.append(clean)
        for side in BookSide:
            base = () if clean else self.book[side]
            self.book[side] = apply_side(base, levels(changes, side), side, LIMIT)

    def on_lost(self) -> None:
        self.lost += 1


class TickerWatcher:
    def __init__(self) -> None:
        self.prices: list[tuple[str, Decimal]] = []
        self.deals: list[tuple[str, Any]] = []

    def on_price(self, market: str, price: str) -> None:
        self.prices.append((market, Decimal(price)))

    def on_deals(self, market: str, deals: list[JsonValue]) -> None:
        self.deals.extend((market, deal) for deal in deals)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def querier(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> AsyncIterator[FeedConnection]:
    """A plain connection for ``depth.query``: what the exchange says the book is."""
    connection = FeedConnection(sim.ws_url(), http, name="querier", **FAST)
    connection.start()
    await asyncio.wait_for(connection.wait_ready(), WAIT)
    yield connection
    await connection.close()


async def exchange_book(querier: FeedConnection) -> Book:
    body = await querier.request("depth.query", [MARKET, LIMIT, "0"])
    return {side: tuple(levels(body, side)) for side in BookSide}


async def until(check: Callable[[], bool], within: float = WAIT) -> None:
    async def holds() -> bool:
        return check()

    assert await eventually(holds, within)


async def until_async(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    assert await eventually(check, within)


async def depth_counts(sim: RunningSimulator) -> dict[str, int]:
    counts: dict[str, int] = (await sim.stats())["subscriptions"]["depth"]
    return counts


async def book_matches(watcher: BookWatcher, querier: FeedConnection) -> bool:
    try:
        return watcher.book == await exchange_book(querier)
    except FeedUnavailable:  # drop_ws drops the querier too; it comes back on its own
        return False


async def place_some(sim: RunningSimulator, shift: int = 0) -> None:
    for step in range(3):
        await sim.place(MARKET, SELL, "1.5", str(Decimal("0.1400") + Decimal(step + shift) / 1000))
        await sim.place(MARKET, BUY, "2", str(Decimal("0.1300") - Decimal(step + shift) / 1000),
                        account="desk-beta")


async def trade(sim: RunningSimulator, market: str, price: str, amount: str) -> None:
    await sim.place(market, SELL, amount, price)
    await sim.place(market, BUY, amount, price, account="desk-beta")


def new_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since ``before`` and still running, but for the in-process servers' own
    connection handlers (the simulator keeps its control client's keep-alive connection)."""
    return [task.get_name() for task in asyncio.all_tasks() - before
            if not task.done() and _qualname(task) != "RequestHandler.start"]


def _qualname(task: asyncio.Task[Any]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))


async def nothing_left_running(before: set[asyncio.Task[Any]]) -> None:
    # Tasks cancelled by close() may need a loop turn or two to finish: wait, bounded.
    await until(lambda: not new_tasks(before))


def depth_feed(sim: RunningSimulator, http: aiohttp.ClientSession, watcher: BookWatcher,
               **options: Any) -> DepthFeed:
    settings = {"limit": LIMIT, "interval": "0", **FAST, **options}
    return DepthFeed(sim.ws_url(), http, MARKET, on_update=watcher.on_update,
                     on_lost=watcher.on_lost, **settings)


# --- depth -------------------------------------------------------------------------------------

async def test_a_depth_feed_is_one_upstream_subscription_that_rebuilds_the_exchange_book(
    sim: RunningSimulator, http: aiohttp.ClientSession, querier: FeedConnection,
) -> None:
    await place_some(sim)
    watcher = BookWatcher()
    feed = depth_feed(sim, http, watcher)
    await feed.start()
    try:
        assert feed.connected
        assert await depth_counts(sim) == {MARKET: 1}
        await until(lambda: bool(watcher.cleans))
        assert watcher.cleans[0] is True
        await until_async(lambda: book_matches(watcher, querier))
        await place_some(sim, shift=5)
        await trade(sim, MARKET, "0.1400", "1")
        await until(lambda: False in watcher.cleans)
        await until_async(lambda: book_matches(watcher, querier))
    finally:
        await feed.close()
    await until_async(lambda: _no_depth(sim))


async def _no_depth(sim: RunningSimulator) -> bool:
    return not await depth_counts(sim)


async def test_a_dropped_depth_feed_reconnects_resubscribes_and_starts_clean(
    sim: RunningSimulator, http: aiohttp.ClientSession, querier: FeedConnection,
) -> None:
    await place_some(sim)
    watcher = BookWatcher()
    feed = depth_feed(sim, http, watcher)
    await feed.start()
    try:
        await until(lambda: bool(watcher.cleans))
        seen = len(watcher.cleans)
        await sim.set_faults(drop_ws=True)
        await until(lambda: watcher.lost == 1)
        await until(lambda: feed.connected and len(watcher.cleans) > seen)
        assert watcher.cleans[seen] is True
        assert feed.reconnects >= 1
        assert await depth_counts(sim) == {MARKET: 1}
        await place_some(sim, shift=7)
        await until_async(lambda: book_matches(watcher, querier))
    finally:
        await feed.close()


async def test_a_depth_feed_cannot_start_while_the_exchange_refuses_and_can_after(
    sim: RunningSimulator, http: aiohttp.ClientSession,
) -> None:
    before = asyncio.all_tasks()
    await sim.set_faults(refuse_ws=True)
    refused = depth_feed(sim, http, BookWatcher(), start_timeout=3.0)
    with pytest.raises(FeedUnavailable, match="503"):
        await refused.start()
    assert not refused.connected
    await sim.set_faults(refuse_ws=False)
    accepted = depth_feed(sim, http, BookWatcher(), start_timeout=3.0)
    await accepted.start()
    assert await depth_counts(sim) == {MARKET: 1}
    await accepted.close()
    await refused.close()
    await nothing_left_running(before)


async def test_a_depth_subscription_the_exchange_rejects_fails_the_start(
    sim: RunningSimulator, http: aiohttp.ClientSession,
) -> None:
    feed = depth_feed(sim, http, BookWatcher(), limit=7)
    with pytest.raises(FeedError) as failure:
        await feed.start()
    assert failure.value.code == INVALID_ARGUMENT
    assert not feed.connected
    await until_async(lambda: _no_connections(sim))


async def _no_connections(sim: RunningSimulator) -> bool:
    return int((await sim.stats())["ws_connections"]) == 0


# --- price and deals ---------------------------------------------------------------------------

async def subscriptions(sim: RunningSimulator) -> tuple[dict[str, int], dict[str, int]]:
    counts = (await sim.stats())["subscriptions"]
    return counts["price"], counts["deals"]


async def test_the_ticker_feed_sends_full_lists_and_restores_them_after_a_drop(
    sim: RunningSimulator, http: aiohttp.ClientSession,
) -> None:
    watcher = TickerWatcher()
    feed = TickerFeed(sim.ws_url(), http, on_price=watcher.on_price, on_deals=watcher.on_deals,
                      **FAST)
    feed.start()
    try:
        await asyncio.wait_for(feed.wait_ready(), WAIT)
        await feed.set_markets({"BCCBTC", "BTGBTC"}, {"BCCBTC"})
        assert await subscriptions(sim) == ({"BCCBTC": 1, "BTGBTC": 1}, {"BCCBTC": 1})
        await trade(sim, MARKET, "0.1412", "1.25")
        await until(lambda: (MARKET, Decimal("0.1412")) in watcher.prices)
        await until(lambda: any(Decimal(deal["price"]) == Decimal("0.1412")
                                and Decimal(deal["amount"]) == Decimal("1.25")
                                for market, deal in watcher.deals if market == MARKET))
        await sim.set_faults(drop_ws=True)
        await until_async(lambda: _ticker_restored(sim, feed))
        await feed.set_markets({"BTGBTC"}, set())
        assert await subscriptions(sim) == ({"BTGBTC": 1}, {})
    finally:
        await feed.close()


async def _ticker_restored(sim: RunningSimulator, feed: TickerFeed) -> bool:
    expected = ({"BCCBTC": 1, "BTGBTC": 1}, {"BCCBTC": 1})
    return feed.reconnects >= 1 and await subscriptions(sim) == expected


async def test_the_ticker_feed_passes_queries_through_and_says_when_it_is_down(
    sim: RunningSimulator, http: aiohttp.ClientSession,
) -> None:
    feed = TickerFeed(sim.ws_url(), http, on_price=lambda *_: None, on_deals=lambda *_: None,
                      **FAST)
    with pytest.raises(FeedUnavailable):
        await feed.request("price.query", [MARKET])
    feed.start()
    await asyncio.wait_for(feed.wait_ready(), WAIT)
    assert isinstance(await feed.request("price.query", [MARKET]), str)
    with pytest.raises(FeedError) as failure:
        await feed.request("price.query", ["NOSUCH"])
    assert failure.value.code == INVALID_ARGUMENT
    await feed.close()
    with pytest.raises(FeedUnavailable):
        await feed.set_markets({MARKET}, set())


# --- heartbeat and shutdown --------------------------------------------------------------------

@pytest.fixture
async def dead_peer() -> AsyncIterator[tuple[str, list[int]]]:
    """A WebSocket server that accepts connections and reads frames but never answers."""
    accepted: list[int] = []

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.append(1)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", silent)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/ws")).replace("http://", "ws://", 1), accepted
    await server.close()


async def test_a_peer_that_stops_answering_is_dropped_and_retried(
    dead_peer: tuple[str, list[int]], http: aiohttp.ClientSession,
) -> None:
    url, accepted = dead_peer
    lost: list[bool] = []
    before = asyncio.all_tasks()
    connection = FeedConnection(url, http, name="dead", heartbeat=0.05, request_timeout=0.1,
                                backoff_initial=0.01, backoff_max=0.05,
                                on_disconnected=lambda: lost.append(True))
    connection.start()
    await until(lambda: connection.reconnects >= 2)
    assert len(accepted) >= 3
    assert lost
    await connection.close()
    assert not connection.connected
    await nothing_left_running(before)


async def test_close_ends_every_task_of_the_feeds(
    sim: RunningSimulator, http: aiohttp.ClientSession,
) -> None:
    before = asyncio.all_tasks()
    watcher = BookWatcher()
    depth = depth_feed(sim, http, watcher)
    ticker = TickerFeed(sim.ws_url(), http, on_price=lambda *_: None,
                        on_deals=lambda *_: None, **FAST)
    await depth.start()
    ticker.start()
    await asyncio.wait_for(ticker.wait_ready(), WAIT)
    await ticker.set_markets({MARKET}, {MARKET})
    await depth.close()
    await ticker.close()
    assert not depth.connected
    assert not ticker.connected
    assert watcher.lost == 0  # closing is not losing
    await nothing_left_running(before)
    await until_async(lambda: _no_connections(sim))

