"""Price and deals of every watched market: one shared upstream connection for all clients.

The upstream lists are the union of what clients follow (Expie's subscribe replaces a
connection's list, so the full union is sent on every change). Because re-sending the list makes
the exchange push its initial state for every market again, what reaches clients is filtered:
a price only when it changed numerically (what Expie itself pushes), deals only when newer than
the newest one seen. A client subscribing to a market already known gets its last price and
last deals (up to 100, newest first) from here right after its reply, with no upstream round
trip; for a market nobody watched, the exchange's own initial report reaches it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

import aiohttp

from gateway.core.decimals import Style, parse_decimal, render
from gateway.core.jsonrpc import JsonValue, encode_notification
from gateway.fanout.client import Client
from gateway.fanout.subscriber import Frame, Kind
from gateway.upstream.feed import TickerFeed

logger = logging.getLogger(__name__)
DEALS_KEPT = 100


class Ticker:
    def __init__(self, url: str, session: aiohttp.ClientSession, heartbeat: float) -> None:
        self.feed = TickerFeed(url, session, on_price=self._price, on_deals=self._deals,
                               heartbeat=heartbeat)
        self._watchers: dict[str, dict[str, set[Client]]] = {
            "price": defaultdict(set), "deals": defaultdict(set)}
        self._prices: dict[str, str] = {}
        self._deals_seen: dict[str, list[dict[str, JsonValue]]] = {}

    async def follow(self, channel: str, client: Client, markets: Iterable[str]) -> None:
        """``client`` follows exactly ``markets`` on ``channel``; the upstream lists follow."""
        watchers = self._watchers[channel]
        for market in (client.price if channel == "price" else client.deals):
            watchers[market].discard(client)
            if not watchers[market]:
                del watchers[market]
        chosen = frozenset(markets)
        for market in chosen:
            watchers[market].add(client)
        if channel == "price":
            client.price = chosen
        else:
            client.deals = chosen
        await self.feed.set_markets(set(self._watchers["price"]), set(self._watchers["deals"]))

    def leave(self, client: Client) -> None:
        for channel, watchers in self._watchers.items():
            for market in (client.price if channel == "price" else client.deals):
                watchers[market].discard(client)
                if not watchers[market]:
                    del watchers[market]

    def initial(self, channel: str, client: Client) -> list[Frame]:
        """What Expie pushes right after a subscription: the known state of each market."""
        if channel == "price":
            known = ((market, parse_decimal(self._prices.get(market, "0")))
                     for market in sorted(client.price))
            return [_price_frame(market, render(value, Style.ENGINE))
                    for market, value in known if value]
        return [_deals_frame(market, list(self._deals_seen[market]))
                for market in sorted(client.deals) if self._deals_seen.get(market)]

    def _price(self, market: str, text: str) -> None:
        value = parse_decimal(text)
        previous = self._prices.get(market)
        if value is None or (previous is not None and parse_decimal(previous) == value):
            return
        self._prices[market] = text
        # A first report of a market reaches only clients that just subscribed to it: it is
        # their initial state (Expie pushes the stripped form then, which the exchange sent).
        frame = _price_frame(market, text)
        for client in self._watchers["price"].get(market, ()):
            client.push(frame)

    def _deals(self, market: str, deals: Sequence[JsonValue]) -> None:
        seen = self._deals_seen.get(market)
        newest = _deal_id(seen[0]) if seen else None
        fresh = [deal for deal in deals if isinstance(deal, dict)
                 and (newest is None or _deal_id(deal) > newest)]
        if not fresh:
            return
        self._deals_seen[market] = (fresh + (seen or []))[:DEALS_KEPT]
        frame = _deals_frame(market, fresh[:DEALS_KEPT])
        for client in self._watchers["deals"].get(market, ()):
            client.push(frame)


def _deal_id(deal: dict[str, JsonValue]) -> int:
    value = deal.get("id")
    return value if isinstance(value, int) else -1


def _price_frame(market: str, text: str) -> Frame:
    return Frame(encode_notification("price.update", [market, text]).encode(), Kind.PRICE)


def _deals_frame(market: str, deals: list[dict[str, JsonValue]]) -> Frame:
    body: list[JsonValue] = list(deals)
    return Frame(encode_notification("deals.update", [market, body]).encode(), Kind.DEALS)
