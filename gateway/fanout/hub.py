"""The fan-out hub: every downstream client's subscriptions over one upstream per market.

Depth: the first client of a market opens its upstream subscription (``MarketDepth``) under a
per-market lock, rolled back with an error to the client if that fails; the last to leave
starts a linger (``ws.linger``) after which it is closed, so churn does not thrash the
exchange. Price and deals: one shared upstream connection (``Ticker``). ``call`` serves the
public methods once their params are checked (``gateway.core.rpc_params``); ``after_reply``
sends what Expie sends right after a successful subscribe (a snapshot, the known prices and
deals), so a client always sees its reply first. Queries are answered from the live book when
it can answer exactly and was confirmed recently enough (``ws.max_book_age``); otherwise they go
to the exchange over the shared connection.

The hub never awaits a client socket: frames are offered to each client's subscriber.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from decimal import Decimal
from typing import Protocol, cast

import aiohttp

from gateway.core.jsonrpc import SERVICE_UNAVAILABLE, JsonValue
from gateway.core.relay_order import Role
from gateway.core.rpc_params import Call, DealsQuery, DepthCall, MarketCall, MarketsCall
from gateway.fanout.client import Client, DepthKey
from gateway.fanout.cluster import ClusterFanout
from gateway.fanout.depth import BookEvents, MarketDepth
from gateway.fanout.leadership import RoleEvents, StreamRole
from gateway.fanout.subscriber import Frame, OutboundSocket, SubscriberEvents
from gateway.fanout.ticker import Ticker
from gateway.upstream.feed import FeedError
from gateway.ws_settings import WebSocketSettings

logger = logging.getLogger(__name__)
SUCCESS: JsonValue = {"status": "success"}
REST_DEPTH_LIMIT = 10


class HubEvents(SubscriberEvents, BookEvents, RoleEvents, Protocol):
    """What the hub's subscribers, books and relay roles report
    (``gateway.telemetry.FanoutMetrics``)."""


class RpcFailure(Exception):
    """A JSON-RPC error for the client: Expie's ``code`` and a message saying why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Hub:
    def __init__(
        self, settings: WebSocketSettings, url: str, *, events: HubEvents | None = None,
        clock: Callable[[], float] = time.time, cluster: ClusterFanout | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        # Set when replicas share Redis: one upstream subscription per stream for all of them.
        self._cluster = cluster
        self._roles: dict[str, StreamRole] = {}
        self._url = url
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._ticker: Ticker | None = None
        self._markets: dict[str, MarketDepth] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lingers: dict[str, asyncio.TimerHandle] = {}
        self._clients: set[Client] = set()
        # Expiries in flight: referenced until done (the loop keeps only weak references).
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ticker = Ticker(self._url, self._session, self.settings.heartbeat,
                              self.settings.linger)
        self._ticker.feed.start()
        if self._cluster is not None:
            await self._cluster.start_ticker(self._ticker)

    async def shutdown(self, code: int, reason: str) -> None:
        """Close every client (``code``, e.g. 1001: reconnect elsewhere)."""
        await asyncio.gather(*(client.close(code, reason) for client in list(self._clients)))

    async def close(self) -> None:
        for handle in self._lingers.values():
            handle.cancel()
        self._lingers.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for market, depth in list(self._markets.items()):
            await self._close_market(market, depth)
        self._markets.clear()
        if self._cluster is not None:
            await self._cluster.close()
        if self._ticker is not None:
            await self._ticker.close()
        if self._session is not None:
            await self._session.close()

    def client(self, socket: OutboundSocket, queue_limit: int) -> Client:
        """A new client of ``socket``; its subscriber resyncs depth from this hub."""
        created = Client(socket, queue_limit, self.events, self._snapshot)
        self._clients.add(created)
        return created

    def leave(self, client: Client) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        self._leave_depth(client)
        self._ticker_of().leave(client)

    async def call(self, client: Client, method: str, call: Call) -> JsonValue:
        """The result of ``method`` for ``client``; raises ``RpcFailure``."""
        if isinstance(call, DepthCall) and method == "depth.subscribe":
            await self._subscribe_depth(client, call)
            return SUCCESS
        if isinstance(call, DepthCall):
            return await self._depth_query(call)
        if isinstance(call, MarketsCall):
            self._check_market_count(client, method, call.markets)
            await self._follow(method.partition(".")[0], client, call.markets)
            return SUCCESS
        if method == "depth.unsubscribe":
            self._leave_depth(client)
            return SUCCESS
        if method in ("price.unsubscribe", "deals.unsubscribe"):
            await self._follow(method.partition(".")[0], client, ())
            return SUCCESS
        return await self._proxy(method, call)

    def after_reply(self, client: Client, method: str) -> None:
        if method == "depth.subscribe" and client.depth is not None:
            frame = self._snapshot(client.depth)
            if frame is not None:
                client.push(frame)
        elif method in ("price.subscribe", "deals.subscribe"):
            for frame in self._ticker_of().initial(method.partition(".")[0], client):
                client.push(frame)

    def depth_body(self, market: str) -> tuple[bytes, int] | None:
        """REST depth (10 levels, unmerged) from the live book and its Age, when there is a book
        confirmed within ``ws.max_book_age``."""
        depth = self._markets.get(market)
        view = depth.query(REST_DEPTH_LIMIT, Decimal(0)) if depth and depth.live else None
        if depth is None or view is None:
            return None
        return json.dumps(view.to_wire()).encode(), depth.age

    async def _subscribe_depth(self, client: Client, call: DepthCall) -> None:
        key: DepthKey = (call.market, call.limit, call.interval_text)
        self._check_market_count(client, "depth.subscribe", (call.market,))
        self._leave_depth(client)
        async with self._locks.setdefault(call.market, asyncio.Lock()):
            depth = self._markets.get(call.market)
            if depth is None:
                depth = await self._open(call.market)
            self._cancel_linger(call.market)
            depth.join(client, key)
            client.depth = key

    async def _open(self, market: str) -> MarketDepth:
        if self._session is None:
            raise RpcFailure(SERVICE_UNAVAILABLE, "service unavailable: the hub is not running")
        depth = MarketDepth(market, self.settings, self._url, self._session, self._clock,
                            self.events)
        try:
            if self._cluster is None:
                await depth.use_upstream()
            else:
                role = self._cluster.role(f"depth:{market}", depth)
                depth.relay_out = role.emit
                await role.start()
                self._roles[market] = role
        except FeedError as exc:
            raise RpcFailure(SERVICE_UNAVAILABLE, f"service unavailable: the exchange did not "
                             f"accept the depth subscription of {market} ({exc})") from exc
        self._markets[market] = depth
        return depth

    def _leave_depth(self, client: Client) -> None:
        key, client.depth = client.depth, None
        if key is None:
            return
        depth = self._markets.get(key[0])
        if depth is None:
            return
        depth.leave(client, key)
        if not depth.watched:
            self._start_linger(key[0])

    def _start_linger(self, market: str) -> None:
        self._cancel_linger(market)
        loop = asyncio.get_running_loop()
        self._lingers[market] = loop.call_later(self.settings.linger, self._linger_over, market)

    def _linger_over(self, market: str) -> None:
        # This linger is over: a market still in ``_lingers`` when ``_expire`` runs has a newer one.
        self._lingers.pop(market, None)
        self._spawn(self._expire(market))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_linger(self, market: str) -> None:
        handle = self._lingers.pop(market, None)
        if handle is not None:
            handle.cancel()

    async def _expire(self, market: str) -> None:
        async with self._locks.setdefault(market, asyncio.Lock()):
            depth = self._markets.get(market)
            if depth is None or depth.watched or market in self._lingers:
                return
            role = self._roles.get(market)
            if role is not None and role.role is Role.LEADER and role.elsewhere:
                # Another replica's clients still follow it through this one's subscription.
                self._start_linger(market)
                return
            del self._markets[market]
        await self._close_market(market, depth)

    async def _close_market(self, market: str, depth: MarketDepth) -> None:
        role = self._roles.pop(market, None)
        if role is not None:
            await role.close()
        await depth.close()

    async def _follow(self, channel: str, client: Client, markets: tuple[str, ...]) -> None:
        try:
            await self._ticker_of().follow(channel, client, markets)
        except FeedError as exc:
            # The lists are recorded and sent again on reconnect: the client is subscribed.
            logger.warning("%s subscription not confirmed by the exchange: %s", channel, exc)

    async def _depth_query(self, call: DepthCall) -> JsonValue:
        depth = self._markets.get(call.market)
        if depth is not None and depth.live and _truncation_proof(call.interval):
            view = depth.query(call.limit, call.interval)
            # A bid bucket at zero is rendered at the engine's precision ("0e-8"), unknown here.
            if view is not None and all(price for price, _ in view.bids):
                return cast(JsonValue, view.to_wire())
        return await self._proxy("depth.query", call)

    async def _proxy(self, method: str, call: Call) -> JsonValue:
        """``price.query`` and ``deals.query`` from the ticker's state when it is exact there,
        else (and every other query) from the exchange over the shared connection."""
        ticker = self._ticker_of()
        local: JsonValue = None
        if isinstance(call, MarketCall) and method == "price.query":
            local = ticker.price_query(call.market)
        elif isinstance(call, DealsQuery):
            local = ticker.deals_query(call.market, call.limit, call.last_id)
        if local is not None:
            return local
        try:
            return await self._ticker_of().feed.request(method, _params(call))
        except FeedError as exc:
            raise RpcFailure(exc.code, exc.message) from exc

    def _check_market_count(self, client: Client, method: str, markets: tuple[str, ...]) -> None:
        principal = client.principal
        for market in markets:
            if principal is not None and not principal.may_trade(market):
                raise RpcFailure(1, f"invalid argument: market {market} is not allowed for "
                                    "this user")
        channel = method.partition(".")[0]
        kept = client.markets - {m for m in client.markets if _only_on(client, m, channel)}
        total = len(kept | set(markets))
        if total > self.settings.max_markets_per_connection:
            raise RpcFailure(1, f"invalid argument: at most "
                                f"{self.settings.max_markets_per_connection} markets per "
                                "connection")

    def _snapshot(self, key: Hashable) -> Frame | None:
        if not isinstance(key, tuple):
            return None
        depth = self._markets.get(key[0])
        return depth.snapshot(key) if depth is not None else None

    def _ticker_of(self) -> Ticker:
        if self._ticker is None:
            raise RpcFailure(SERVICE_UNAVAILABLE, "service unavailable: the hub is not running")
        return self._ticker


def _only_on(client: Client, market: str, channel: str) -> bool:
    """Whether ``market`` is followed by ``client`` on ``channel`` alone (replaced now)."""
    on = {"depth": {client.depth[0]} if client.depth else set(), "price": set(client.price),
          "deals": set(client.deals)}
    return all(market not in markets for name, markets in on.items() if name != channel)


def _truncation_proof(interval: Decimal) -> bool:
    """Whether the engine's view at ``interval`` is the one computed here, whatever its precision.

    The engine truncates a query's interval to its market's money precision, which the gateway
    does not know (8 decimals for some markets, 6 for others). Zero and powers of ten come out
    alike either way: one truncated to zero is finer than any price step, and merging at it
    changes nothing. Any other interval is asked of the exchange.
    """
    return not interval or interval.normalize().as_tuple().digits == (1,)


def _params(call: Call) -> list[JsonValue]:
    if isinstance(call, DepthCall):
        return [call.market, call.limit, call.interval_text]
    if isinstance(call, MarketCall):
        return [call.market]
    if isinstance(call, DealsQuery):
        return [call.market, call.limit, call.last_id]
    return []
