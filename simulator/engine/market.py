"""The state of one market: its two book halves, its public deal tape, its last price.

``version`` increases on every change to the book or the tape, so readers (the ticker) can
cache what they render.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal, InvalidOperation

from gateway.core.decimals import truncate
from gateway.core.depth_book import BookSide, DepthView, merge_side
from simulator.config import MarketSpec
from simulator.engine.book import BookHalf
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.model import ZERO, MarketDeal, Order, Side

TAPE_LENGTH = 10_000
DAY = 86_400.0


class MarketState:
    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.asks = BookHalf(BookSide.ASKS)
        self.bids = BookHalf(BookSide.BIDS)
        self.tape: deque[MarketDeal] = deque(maxlen=TAPE_LENGTH)
        self.last_price = ZERO
        self.version = 0
        # Rendered bodies keyed by name, each with the version and time it was rendered at.
        self.rendered: dict[str, tuple[int, float, bytes]] = {}

    def half(self, side: Side) -> BookHalf:
        return self.asks if side is Side.SELL else self.bids

    def opposite(self, side: Side) -> BookHalf:
        return self.bids if side is Side.SELL else self.asks

    def rest(self, order: Order) -> None:
        self.half(order.side).add(order)
        self.version += 1

    def take_off(self, order: Order) -> None:
        self.half(order.side).remove(order)
        self.version += 1

    def record_deal(self, deal: MarketDeal) -> None:
        self.tape.append(deal)
        self.last_price = deal.price
        self.version += 1

    def depth(self, limit: int, interval: Decimal) -> DepthView:
        """The book as ``depth.query`` shows it: finer intervals than the price step mean none."""
        try:
            interval = truncate(interval, self.spec.engine_money_precision)
        except InvalidOperation:  # too many digits for the engine's 34-digit arithmetic
            raise EngineError(ErrorKind.INVALID_ARGUMENT) from None
        return DepthView(
            asks=merge_side(self.asks.levels(), BookSide.ASKS, interval, limit),
            bids=merge_side(self.bids.levels(), BookSide.BIDS, interval, limit),
        )

    def deals_since(self, last_id: int, limit: int) -> list[MarketDeal]:
        """Deals newer than ``last_id``, newest first, at most ``limit`` (oldest skipped)."""
        deals: list[MarketDeal] = []
        for deal in reversed(self.tape):
            if deal.id <= last_id or len(deals) == limit:
                break
            deals.append(deal)
        return deals

    def day_range(self, now: float) -> tuple[Decimal, Decimal]:
        """High and low of the last 24 hours; the last price when nothing traded in that time."""
        prices = [deal.price for deal in self._deals_after(now - DAY)]
        if not prices:
            return self.last_price, self.last_price
        return max(prices), min(prices)

    def _deals_after(self, since: float) -> list[MarketDeal]:
        deals = []
        for deal in reversed(self.tape):
            if deal.time < since:
                break
            deals.append(deal)
        return deals
