"""One side of a market's order book: price levels in price-time priority.

Levels hold their resting orders in arrival order (ids increase with time) and keep the sum of
their ``left`` so depth is read without walking orders.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from decimal import Decimal

from gateway.core.depth_book import BookSide, Level
from simulator.engine.model import Order


class PriceLevel:
    __slots__ = ("orders", "price", "total")

    def __init__(self, price: Decimal) -> None:
        self.price = price
        self.orders: dict[int, Order] = {}
        self.total = Decimal(0)


class BookHalf:
    def __init__(self, side: BookSide) -> None:
        self.side = side
        self._levels: dict[Decimal, PriceLevel] = {}
        self._prices: list[Decimal] = []

    def __len__(self) -> int:
        return len(self._prices)

    def best(self) -> PriceLevel | None:
        if not self._prices:
            return None
        price = self._prices[0] if self.side is BookSide.ASKS else self._prices[-1]
        return self._levels[price]

    def best_order(self) -> Order | None:
        level = self.best()
        return next(iter(level.orders.values())) if level else None

    def add(self, order: Order) -> None:
        level = self._levels.get(order.price)
        if level is None:
            level = self._levels[order.price] = PriceLevel(order.price)
            insort(self._prices, order.price)
        level.orders[order.id] = order
        level.total += order.left

    def reduce(self, order: Order, quantity: Decimal) -> None:
        """``order`` just traded ``quantity``; drop it (and its level) once nothing is left."""
        level = self._levels[order.price]
        level.total -= quantity
        if order.left == 0:
            self._remove_from(level, order)

    def remove(self, order: Order) -> None:
        level = self._levels[order.price]
        level.total -= order.left
        self._remove_from(level, order)

    def _remove_from(self, level: PriceLevel, order: Order) -> None:
        del level.orders[order.id]
        if not level.orders:
            del self._levels[level.price]
            del self._prices[bisect_left(self._prices, level.price)]

    def levels(self) -> Iterator[Level]:
        """``(price, total left)`` from the best price outward."""
        prices = self._prices if self.side is BookSide.ASKS else reversed(self._prices)
        for price in prices:
            yield price, self._levels[price].total

    def orders(self) -> Iterator[Order]:
        for price in self._prices:
            yield from self._levels[price].orders.values()
