"""Depth views and the diffs between them, exactly as Expie computes them.

A *side* is a list of ``(price, amount)`` levels in book order: asks ascending, bids descending.
A *view* is ``(limit, interval)``: merge levels into price buckets of ``interval`` (asks rounded
up, bids rounded down; ``0`` means unmerged) and keep the best ``limit`` levels.

Diffs follow Expie's merge-walk over the previous and the new view: changed or new levels carry
their new amount, vanished levels carry ``0``; levels that fell out of the top ``limit`` are
*not* announced, so a client applies a diff and then truncates each side to ``limit``.

Pure functions on Decimals; rendering to wire strings happens in ``render_side``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import Enum
from itertools import islice
from typing import TypeAlias

from gateway.core.decimals import render

Level: TypeAlias = tuple[Decimal, Decimal]
ZERO = Decimal(0)


class BookSide(Enum):
    ASKS = "asks"
    BIDS = "bids"

    def before(self, left: Decimal, right: Decimal) -> bool:
        """True when price ``left`` comes before ``right`` in this side's book order."""
        return left < right if self is BookSide.ASKS else left > right

    def sort(self, levels: list[Level]) -> list[Level]:
        return sorted(levels, key=lambda level: level[0], reverse=self is BookSide.BIDS)


@dataclass(frozen=True, slots=True)
class DepthView:
    asks: tuple[Level, ...]
    bids: tuple[Level, ...]

    def side(self, side: BookSide) -> tuple[Level, ...]:
        return self.asks if side is BookSide.ASKS else self.bids

    def to_wire(self) -> dict[str, list[list[str]]]:
        return {"asks": render_side(self.asks), "bids": render_side(self.bids)}


def bucket_price(price: Decimal, side: BookSide, interval: Decimal) -> Decimal:
    rounding = ROUND_CEILING if side is BookSide.ASKS else ROUND_FLOOR
    return (price / interval).to_integral_value(rounding=rounding) * interval


def merge_side(
    levels: Iterable[Level], side: BookSide, interval: Decimal, limit: int
) -> tuple[Level, ...]:
    """Best ``limit`` levels of ``levels`` (book order), merged into ``interval`` buckets."""
    if interval <= 0:
        return tuple(islice(levels, limit))
    merged: list[Level] = []
    for price, amount in levels:
        bucket = bucket_price(price, side, interval)
        if merged and merged[-1][0] == bucket:
            merged[-1] = (bucket, merged[-1][1] + amount)
            continue
        if len(merged) == limit:
            break
        merged.append((bucket, amount))
    return tuple(merged)


def diff_side(
    old: tuple[Level, ...], new: tuple[Level, ...], side: BookSide, limit: int
) -> list[Level]:
    """Expie's diff of one side; ``amount == 0`` marks a removed level."""
    changes: list[Level] = []
    i = j = 0
    while i < len(old) and j < len(new):
        (old_price, old_amount), (new_price, new_amount) = old[i], new[j]
        if old_price == new_price:
            if old_amount != new_amount:
                changes.append(new[j])
            i, j = i + 1, j + 1
        elif side.before(old_price, new_price):
            changes.append((old_price, ZERO))
            i += 1
        else:
            changes.append(new[j])
            j += 1
    if len(new) < limit:
        changes.extend((price, ZERO) for price, _ in old[i:])
    changes.extend(new[j:])
    return changes


def diff_views(old: DepthView, new: DepthView, limit: int) -> dict[str, list[list[str]]]:
    """The wire diff between two views; a side without changes is omitted, ``{}`` if none."""
    diff: dict[str, list[list[str]]] = {}
    for side in BookSide:
        changes = diff_side(old.side(side), new.side(side), side, limit)
        if changes:
            diff[side.value] = render_side(changes)
    return diff


def apply_side(
    levels: tuple[Level, ...], changes: list[Level], side: BookSide, limit: int
) -> tuple[Level, ...]:
    """What a client does with a diff: upsert, drop zero levels, re-sort, truncate to ``limit``."""
    book = dict(levels)
    for price, amount in changes:
        if amount == 0:
            book.pop(price, None)
        else:
            book[price] = amount
    return tuple(side.sort(list(book.items()))[:limit])


def render_side(levels: tuple[Level, ...] | list[Level]) -> list[list[str]]:
    return [[render(price), render(amount)] for price, amount in levels]
