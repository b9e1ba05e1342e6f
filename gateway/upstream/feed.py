"""The upstream market-data feeds: one depth subscription per connection, one ticker connection.

Expie allows ONE depth subscription per connection and replaces a connection's price and deals
market lists on each subscribe, so:

- ``DepthFeed`` owns a ``FeedConnection`` carrying exactly one ``(market, limit, interval)``
  depth subscription, made again after every reconnect; the exchange then starts with a
  ``clean=true`` snapshot, which the owner uses to rebuild its book. ``query`` asks the
  exchange for that same view on that connection, so the owner can check its book.
- ``TickerFeed`` owns the one shared connection for price and deals of every market of
  interest. It always sends the FULL market lists (replace semantics), when they change and
  after every reconnect, and passes ``*.query`` calls through for proxying.

Pushes are decoded and handed to sync callbacks in arrival order; the callbacks must not block.
These feeds keep no book and no prices: that is the owner's job (the fan-out hub). Errors are
``FeedError`` and ``FeedUnavailable`` (see ``feed_connection``), never ``GatewayError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Final, Unpack

import aiohttp

from gateway.core.jsonrpc import SERVICE_TIMEOUT, JsonValue
from gateway.upstream.feed_connection import (
    FeedConnection,
    FeedError,
    FeedOptions,
    FeedUnavailable,
)

__all__ = ["DepthFeed", "FeedConnection", "FeedError", "FeedOptions", "FeedUnavailable",
           "TickerFeed"]

logger = logging.getLogger(__name__)

DepthUpdate = Callable[[bool, dict[str, JsonValue], str], None]
"""``(clean, {"asks"?: [[price, amount], …], "bids"?: …}, market)`` as the exchange sent it."""

# Unsubscribing on close is a courtesy; a dead connection must not hold the close up.
_UNSUBSCRIBE_TIMEOUT: Final = 1.0
_CHANNELS: Final = ("price", "deals")


def _nothing_lost() -> None:
    pass


class DepthFeed:
    """One upstream depth subscription on its own connection; single use (start, then close)."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, market: str, *, limit: int = 100,
        interval: str = "0", on_update: DepthUpdate, on_lost: Callable[[], None] = _nothing_lost,
        start_timeout: float = 5.0, **options: Unpack[FeedOptions],
    ) -> None:
        self.market, self.limit, self.interval = market, limit, interval
        self._on_update = on_update
        self._start_timeout = start_timeout
        self._connection = FeedConnection(
            url, session, name=f"depth-{market}-{limit}-{interval}", on_push=self._on_push,
            on_connected=self._subscribe, on_disconnected=on_lost, **options)

    @property
    def connected(self) -> bool:
        return self._connection.connected

    @property
    def reconnects(self) -> int:
        return self._connection.reconnects

    async def start(self) -> None:
        """Connect and subscribe; on failure (first attempt, or ``start_timeout``) close, raise."""
        self._connection.start()
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._connection.wait_ready()
        except BaseException as exc:
            # Cancelled included: a start nobody waits for must not leave a connection behind.
            await self._connection.close()
            if isinstance(exc, TimeoutError):
                raise FeedUnavailable(f"{self._connection.name}: not subscribed within "
                                      f"{self._start_timeout:g} s") from exc
            raise

    async def query(self) -> JsonValue:
        """The exchange's ``depth.query`` of this subscription's very view, on its connection
        (a check of the book, costing no connection of its own); raises ``FeedError``."""
        return await self._connection.request("depth.query",
                                              [self.market, self.limit, self.interval])

    async def close(self) -> None:
        """Unsubscribe (best effort) and close the connection."""
        if self._connection.connected:
            with contextlib.suppress(FeedError, TimeoutError):
                async with asyncio.timeout(_UNSUBSCRIBE_TIMEOUT):
                    await self._connection.request("depth.unsubscribe", [])
        await self._connection.close()

    async def _subscribe(self) -> None:
        await self._connection.request("depth.subscribe", [self.market, self.limit, self.interval])

    def _on_push(self, method: str, params: list[JsonValue]) -> None:
        if method != "depth.update" or len(params) != 3:  # [clean, changes, market]
            return
        clean, changes, market = params
        if not (isinstance(clean, bool) and isinstance(changes, dict)):
            logger.warning("%s: ignoring a malformed depth.update", self._connection.name)
        elif market == self.market:
            self._on_update(clean, changes, market)


class TickerFeed:
    """Price and deals of every market of interest, on one shared connection."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, *,
        on_price: Callable[[str, str], None], on_deals: Callable[[str, list[JsonValue]], None],
        on_lost: Callable[[], None] = _nothing_lost, **options: Unpack[FeedOptions],
    ) -> None:
        self._on_price, self._on_deals = on_price, on_deals
        self._wanted: dict[str, frozenset[str]] = dict.fromkeys(_CHANNELS, frozenset())
        # What the exchange has acknowledged on this connection; None = unknown (resend).
        self._sent: dict[str, frozenset[str] | None] = dict.fromkeys(_CHANNELS, frozenset())
        self._lock = asyncio.Lock()
        self._connection = FeedConnection(
            url, session, name="ticker", on_push=self._on_push, on_connected=self._resubscribe,
            on_disconnected=on_lost, **options)

    @property
    def connected(self) -> bool:
        return self._connection.connected

    @property
    def reconnects(self) -> int:
        return self._connection.reconnects

    @property
    def price_markets(self) -> frozenset[str]:
        return self._wanted["price"]

    @property
    def deals_markets(self) -> frozenset[str]:
        return self._wanted["deals"]

    def start(self) -> None:
        """Begin connecting in the background (use ``wait_ready`` to wait for it)."""
        self._connection.start()

    async def wait_ready(self) -> None:
        """Until connected and resubscribed (unbounded: wrap it in ``asyncio.timeout``)."""
        await self._connection.wait_ready()

    async def close(self) -> None:
        await self._connection.close()

    async def set_markets(self, price: AbstractSet[str], deals: AbstractSet[str]) -> None:
        """Make these the subscribed lists; a list that changed is sent in full.

        The lists are recorded first and sent again after every reconnect whatever happens
        here; raises ``FeedUnavailable`` when a list had to be sent and there is no
        connection, ``FeedError`` when the exchange refused it or did not answer.
        """
        self._wanted = {"price": frozenset(price), "deals": frozenset(deals)}
        await self._sync()

    async def request(self, method: str, params: Sequence[JsonValue]) -> JsonValue:
        """Pass a call through (``price.query``, ``deals.query``, …) on the shared connection."""
        return await self._connection.request(method, params)

    async def _resubscribe(self) -> None:
        async with self._lock:
            self._sent = dict.fromkeys(_CHANNELS, frozenset())
        try:
            await self._sync()
        except FeedError as exc:
            if isinstance(exc, FeedUnavailable) or exc.code == SERVICE_TIMEOUT:
                raise
            # A list the exchange refuses would refuse again after a reconnect: flapping the
            # connection would only cost every other market its prices. Kept for the next try.
            logger.warning("ticker: the exchange refused a market list: %s", exc)

    async def _sync(self) -> None:
        # Under the lock, each call sends the latest wanted lists: with replace semantics the
        # last list sent wins, so it must be the newest one.
        async with self._lock:
            errors = [error for channel in _CHANNELS if (error := await self._send(channel))]
        if errors:
            raise errors[0]

    async def _send(self, channel: str) -> FeedError | None:
        wanted = self._wanted[channel]
        if self._sent[channel] == wanted:
            return None
        self._sent[channel] = None  # unknown until the exchange answers: resend next time
        try:
            await self._connection.request(f"{channel}.subscribe", sorted(wanted))
        except FeedError as exc:
            return exc
        self._sent[channel] = wanted
        return None

    def _on_push(self, method: str, params: list[JsonValue]) -> None:
        if len(params) != 2:  # [market, payload]
            return
        market, payload = params
        # A push for a market just dropped from the list may still be on its way: not wanted.
        if (method == "price.update" and isinstance(payload, str)
                and market in self._wanted["price"]):
            self._on_price(str(market), payload)
        elif (method == "deals.update" and isinstance(payload, list)
              and market in self._wanted["deals"]):
            self._on_deals(str(market), payload)
