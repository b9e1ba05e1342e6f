"""Price and deals of every watched market: one shared upstream connection for all clients.

The upstream lists are the union of what clients follow (Expie's subscribe replaces a
connection's list, so the full union is sent on every change). Because re-sending the list makes
the exchange push its initial state for every market again, what reaches clients is filtered:
a price only when it changed numerically (what Expie itself pushes), deals only when newer than
the newest one seen. A client subscribing to a market already known gets its last price and
last deals (up to 100, newest first) from here right after its reply, with no upstream round
trip; for a market nobody watched, the exchange's own initial report reaches it. A market
nobody follows any more stays in the upstream lists for ``ws.linger`` seconds, as depth does.

While a client's subscription is on its way upstream it receives nothing on that channel: the
exchange answers a new list with its initial state at once, which would otherwise reach the
client before its reply. Whatever it missed meanwhile is in what ``initial`` gives it right after
the reply. A client that leaves is taken off the upstream lists too, in the background.

In a cluster the ticker's leader subscribes the union of every replica's lists (``demand_out``
records this replica's, ``set_cluster_demand`` brings the cluster's) and relays each change of
its state (``relay_out``): a new price, new deals, a lost connection. A follower's connection
subscribes nothing (it still carries the proxied queries); its state comes from the leader's
changes (``apply``) and snapshot (``load``), and a snapshot after a gap pushes what moved
meanwhile: a price that changed, deals newer than the newest seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import aiohttp

from gateway.core.decimals import Style, parse_decimal, render
from gateway.core.jsonrpc import JsonValue, encode_notification
from gateway.core.relay_order import RelayFormatError, relay_nowhere
from gateway.errors import StoreUnavailable
from gateway.fanout.client import Client
from gateway.fanout.subscriber import Frame, Kind
from gateway.stores.market_relay import Demand
from gateway.upstream.feed import FeedError, TickerFeed

logger = logging.getLogger(__name__)
DEALS_KEPT = 100


class Ticker:
    def __init__(
        self, url: str, session: aiohttp.ClientSession, heartbeat: float, linger: float
    ) -> None:
        self._linger = linger
        # In a cluster: where this replica's own lists go (the leader reads every replica's),
        # what the whole cluster follows, where changes are relayed while leading, and whether
        # the state comes from the relay (following) and is whole there.
        self.demand_out: Callable[[Demand], Awaitable[None]] | None = None
        self._cluster = Demand(frozenset(), frozenset())
        self.relay_out: Callable[[str, JsonValue], bool] = relay_nowhere
        self._following = False
        self._relay_whole = False
        self._dirty: set[str] = set()
        # Markets nobody follows any more, kept in the upstream lists until the linger ends,
        # so churn does not resend the lists: channel -> market -> when it may go.
        self._lingering: dict[str, dict[str, float]] = {"price": {}, "deals": {}}
        self.feed = TickerFeed(url, session, on_price=self._price, on_deals=self._deals,
                               on_lost=self._lost, heartbeat=heartbeat)
        self._watchers: dict[str, dict[str, set[Client]]] = {
            "price": defaultdict(set), "deals": defaultdict(set)}
        self._joining: dict[str, set[Client]] = {"price": set(), "deals": set()}
        self._prices: dict[str, str] = {}
        self._deals_seen: dict[str, list[dict[str, JsonValue]]] = {}
        # Markets whose state here is current enough to answer a query as the exchange would:
        # a price that came as a change (the exchange's unstripped price.query form, which a
        # first report is not), deals unbroken since the connection last came up.
        self._price_exact: set[str] = set()
        self._deals_whole: set[str] = set()
        self._syncs: set[asyncio.Task[None]] = set()

    async def follow(self, channel: str, client: Client, markets: Iterable[str]) -> None:
        """``client`` follows exactly ``markets`` on ``channel``; the upstream lists follow.

        Raises ``FeedError`` when the exchange did not take the new lists (they are kept and
        sent again after a reconnect). Call ``initial`` once the client has its reply.
        """
        self._unwatch(channel, client)
        chosen = frozenset(markets)
        for market in chosen:
            self._watchers[channel][market].add(client)
            self._lingering[channel].pop(market, None)
        if channel == "price":
            client.price = chosen
        else:
            client.deals = chosen
        joining = self._joining[channel]
        joining.add(client)
        try:
            await self._send_lists()
        finally:
            joining.discard(client)

    def leave(self, client: Client) -> None:
        """Forget ``client``; the upstream lists shrink in the background if they can."""
        for channel in self._watchers:
            self._unwatch(channel, client)

    def _linger_over(self) -> None:
        now = asyncio.get_running_loop().time()
        ended = False
        for lingering in self._lingering.values():
            for market in [m for m, until in lingering.items() if until <= now]:
                del lingering[market]
                ended = True
        if ended:
            task = asyncio.get_running_loop().create_task(self._shrink_lists())
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)

    async def close(self) -> None:
        for task in list(self._syncs):
            task.cancel()
        await asyncio.gather(*self._syncs, return_exceptions=True)
        await self.feed.close()

    def initial(self, channel: str, client: Client) -> list[Frame]:
        """What Expie pushes right after a subscription: the known state of each market."""
        if channel == "price":
            known = ((market, parse_decimal(self._prices.get(market, "0")))
                     for market in sorted(client.price))
            return [_price_frame(market, render(value, Style.ENGINE))
                    for market, value in known if value]
        return [_deals_frame(market, list(self._deals_seen[market]))
                for market in sorted(client.deals) if self._deals_seen.get(market)]

    def _unwatch(self, channel: str, client: Client) -> None:
        """Take ``client`` off ``channel``'s watchers; a market that lost its last one lingers."""
        watchers, emptied = self._watchers[channel], False
        until = asyncio.get_running_loop().time() + self._linger
        for market in (client.price if channel == "price" else client.deals):
            watchers[market].discard(client)
            if not watchers[market]:
                del watchers[market]
                self._lingering[channel][market] = until
                emptied = True
        if emptied:
            asyncio.get_running_loop().call_later(self._linger, self._linger_over)

    @property
    def needed(self) -> bool:
        return any(self._watchers[name] or self._lingering[name] for name in self._watchers)

    @property
    def own_demand(self) -> Demand:
        """What this replica's clients follow (lingering markets included)."""
        price, deals = (frozenset(self._watchers[name]) | frozenset(self._lingering[name])
                        for name in ("price", "deals"))
        return Demand(price, deals)

    async def set_cluster_demand(self, demand: Demand) -> None:
        """What every replica follows; the upstream lists follow it while this one leads."""
        if demand == self._cluster:
            return
        self._cluster = demand
        if not self._following:
            await self._send_lists()

    async def use_upstream(self) -> None:
        if self._following:
            self._following = False
            self._relay_whole = False
            self._lost()  # this connection's own continuity starts now
        await self._send_lists()

    async def use_relay(self) -> None:
        self._following = True
        self.hold()
        try:
            await self.feed.set_markets(frozenset(), frozenset())
        except FeedError as exc:  # kept: an empty list is sent again on reconnect
            logger.info("ticker: the emptied market lists were not sent: %s", exc)

    def hold(self) -> None:
        self._relay_whole = False

    def fields(self, everything: bool) -> dict[str, str]:
        markets = set(self._prices) | set(self._deals_seen)
        names = ({f"{kind}:{market}" for market in markets for kind in "pd"} if everything
                 else self._dirty)
        self._dirty = set()
        fields = {}
        for name in names:
            kind, _, market = name.partition(":")
            if kind == "p" and market in self._prices:
                fields[name] = json.dumps([self._prices[market], market in self._price_exact])
            elif kind == "d" and market in self._deals_seen:
                fields[name] = json.dumps([market in self._deals_whole,
                                           self._deals_seen[market]])
        return fields

    def load(self, fields: Mapping[str, str]) -> None:
        try:
            loaded = [(name.partition(":"), json.loads(value)) for name, value in fields.items()]
            prices = {market: (str(text), bool(exact))
                      for (kind, _, market), (text, exact) in loaded if kind == "p"}
            deals = {market: (bool(whole), [deal for deal in kept if isinstance(deal, dict)])
                     for (kind, _, market), (whole, kept) in loaded if kind == "d"}
        except (ValueError, TypeError) as exc:
            raise RelayFormatError(f"ticker: {exc}") from exc
        for market, (text, exact) in prices.items():
            before = self._prices.get(market)
            self._prices[market] = text
            (self._price_exact.add if exact else self._price_exact.discard)(market)
            if before is not None and parse_decimal(before) != parse_decimal(text):
                self._push("price", market, _price_frame(market, text))
        self._deals_whole = {market for market, (whole, _) in deals.items() if whole}
        for market, (_, kept) in deals.items():
            seen = self._deals_seen.get(market)
            newest = _deal_id(seen[0]) if seen else None
            self._deals_seen[market] = kept[:DEALS_KEPT]
            fresh = [deal for deal in kept if newest is not None and _deal_id(deal) > newest]
            if fresh:
                self._push("deals", market, _deals_frame(market, fresh[:DEALS_KEPT]))
        self._relay_whole = True

    def apply(self, kind: str, data: JsonValue) -> None:
        if kind == "l":
            self._lost()
        elif isinstance(data, list) and len(data) == 2 and isinstance(data[0], str):
            if kind == "p" and isinstance(data[1], str):
                self._price(data[0], data[1])
            elif kind == "d" and isinstance(data[1], list):
                self._deals(data[0], data[1])

    @property
    def whole(self) -> bool:
        """Whether the state here is current: the upstream connection is up, or the relay is
        whole."""
        return self._relay_whole if self._following else self.feed.connected

    async def _send_lists(self) -> None:
        # The lists are read here, when sent: a later change never loses to an older list.
        own = self.own_demand
        if self.demand_out is not None:
            try:
                await self.demand_out(own)
            except StoreUnavailable as exc:  # the next tick writes them again
                logger.info("ticker: this replica's lists did not reach Redis: %s", exc.message)
        if not self._following:
            await self.feed.set_markets(own.price | self._cluster.price,
                                        own.deals | self._cluster.deals)

    async def _shrink_lists(self) -> None:
        try:
            await self._send_lists()
        except FeedError as exc:  # kept: sent again with the next change or reconnect
            logger.info("ticker: the smaller market lists were not sent: %s", exc)

    def _push(self, channel: str, market: str, frame: Frame) -> None:
        joining = self._joining[channel]
        for client in self._watchers[channel].get(market, ()):
            if client not in joining:
                client.push(frame)

    def _price(self, market: str, text: str) -> None:
        value = parse_decimal(text)
        previous = self._prices.get(market)
        if value is None or (previous is not None and parse_decimal(previous) == value):
            return
        if previous is not None:
            self._price_exact.add(market)
        self._prices[market] = text
        self._dirty.add(f"p:{market}")
        self.relay_out("p", [market, text])
        # A first report of a market answers a new list: its subscribers get it here if it
        # comes after their reply, else from ``initial`` (the same stripped form either way).
        self._push("price", market, _price_frame(market, text))

    def _deals(self, market: str, deals: Sequence[JsonValue]) -> None:
        if self._take_deals(market, deals):
            self._dirty.add(f"d:{market}")
            self.relay_out("d", [market, list(deals)])

    def _take_deals(self, market: str, deals: Sequence[JsonValue]) -> bool:
        """Keep what is new in a deals report and push it; whether the state changed."""
        if market not in self._deals_whole:
            # The first report since the connection came up is the exchange's newest deals:
            # start the kept list from it, so no gap left by an outage hides in it.
            self._deals_whole.add(market)
            known = {_deal_id(deal) for deal in self._deals_seen.get(market, [])}
            reported = [deal for deal in deals if isinstance(deal, dict)]
            self._deals_seen[market] = reported[:DEALS_KEPT]
            news = [deal for deal in reported if _deal_id(deal) not in known]
            if news:
                self._push("deals", market, _deals_frame(market, news[:DEALS_KEPT]))
            return True
        seen = self._deals_seen.get(market)
        newest = _deal_id(seen[0]) if seen else None
        fresh = [deal for deal in deals if isinstance(deal, dict)
                 and (newest is None or _deal_id(deal) > newest)]
        if not fresh:
            return False
        self._deals_seen[market] = (fresh + (seen or []))[:DEALS_KEPT]
        self._push("deals", market, _deals_frame(market, fresh[:DEALS_KEPT]))
        return True

    def price_query(self, market: str) -> str | None:
        """``price.query`` from here, when the market is followed and its price exact."""
        if self.whole and market in self._watchers["price"] and market in self._price_exact:
            return self._prices[market]
        return None

    def deals_query(self, market: str, limit: int, last_id: int) -> list[JsonValue] | None:
        """``deals.query`` from here: the newest ``limit`` deals newer than ``last_id``, when
        the market is followed and the kept deals reach that far back."""
        kept = self._deals_seen.get(market, [])
        if not (self.whole and market in self._watchers["deals"]
                and market in self._deals_whole and len(kept) >= limit):
            return None
        return [deal for deal in kept[:limit] if _deal_id(deal) > last_id]

    def _lost(self) -> None:
        self.relay_out("l", None)
        self._dirty.update(f"p:{market}" for market in self._price_exact)
        self._dirty.update(f"d:{market}" for market in self._deals_whole)
        self._price_exact.clear()
        self._deals_whole.clear()


def _deal_id(deal: dict[str, JsonValue]) -> int:
    value = deal.get("id")
    return value if isinstance(value, int) else -1


def _price_frame(market: str, text: str) -> Frame:
    return Frame(encode_notification("price.update", [market, text]).encode(), Kind.PRICE)


def _deals_frame(market: str, deals: list[dict[str, JsonValue]]) -> Frame:
    body: list[JsonValue] = list(deals)
    return Frame(encode_notification("deals.update", [market, body]).encode(), Kind.DEALS)
