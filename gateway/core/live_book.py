"""The gateway's live copy of one market's book, and the per-view streams fanned out from it.

``LocalBook`` is the book as one upstream depth subscription at ``(upstream_limit, "0")`` reveals
it: the exchange's best ``upstream_limit`` unmerged levels per side, kept up to date from clean
snapshots and diffs exactly as an Expie client must (upsert, ``"0"`` removes, truncate to the
limit). From it, ``view(limit, interval)`` derives any downstream view, or ``None`` when the levels
the gateway holds are not enough to know that view exactly (see ``LocalBook.view``).

``ViewStream`` turns the successive views of one downstream subscription ``(market, limit,
interval text)`` into the very ``depth.update`` frames Expie sends for it: a clean snapshot first,
then Expie's diffs, nothing when nothing changed, and a clean snapshot again on the first change
after ``full_every`` seconds. Each frame is encoded once, for every subscriber of the view.

``depth.query`` answers are ``view(limit, interval).to_wire()`` (``query_view``).

Pure: no I/O, no clock (``now`` is passed in), no network types. Merging, diffing and rendering are
``gateway.core.depth_book``'s; this module only decides what is exact and what to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, localcontext
from itertools import pairwise
from typing import cast

from gateway.core.decimals import ENGINE_CONTEXT, parse_decimal
from gateway.core.depth_book import (
    BookSide,
    DepthView,
    Level,
    apply_side,
    bucket_price,
    diff_views,
    merge_side,
)
from gateway.core.jsonrpc import JsonValue, encode_notification

FULL_SNAPSHOT_EVERY = 60.0


class BookError(ValueError):
    """An upstream depth body the book cannot apply; the book is left as it was."""


class LocalBook:
    """One market's book from one upstream depth subscription at ``(upstream_limit, "0")``."""

    __slots__ = ("_live", "_sides", "_upstream_limit")

    def __init__(self, upstream_limit: int) -> None:
        if upstream_limit < 1:
            raise ValueError("upstream_limit must be at least 1")
        self._upstream_limit = upstream_limit
        self._live = False
        self._sides: dict[BookSide, tuple[Level, ...]] = dict.fromkeys(BookSide, ())

    @property
    def upstream_limit(self) -> int:
        return self._upstream_limit

    @property
    def live(self) -> bool:
        """True from the first clean snapshot until ``reset``."""
        return self._live

    def levels(self, side: BookSide) -> tuple[Level, ...]:
        return self._sides[side]

    def apply(self, clean: bool, body: Mapping[str, object]) -> None:
        """Apply one ``depth.update`` body: a clean snapshot replaces the book, a diff patches it.

        Keys other than ``asks`` and ``bids`` are ignored. Raises ``BookError`` (and changes
        nothing) on a malformed body, a clean snapshot missing a side, or a diff before any
        clean snapshot (there would be nothing sound to patch).
        """
        if not clean and not self._live:
            raise BookError("depth diff before the first clean snapshot")
        changes = {side: _parse_side(body, side, required=clean) for side in BookSide}
        limit = self._upstream_limit
        for side, side_changes in changes.items():
            # Expie omits an unchanged side from a diff; a clean snapshot starts from nothing.
            base = () if clean else self._sides[side]
            self._sides[side] = apply_side(base, side_changes, side, limit)
        self._live = True

    def reset(self) -> None:
        """Forget the book (the upstream dropped): it is stale until the next clean snapshot."""
        self._live = False
        self._sides = dict.fromkeys(BookSide, ())

    def view(self, limit: int, interval: Decimal) -> DepthView | None:
        """The exchange's ``depth.query`` result for ``(limit, interval)``, or ``None``.

        ``interval`` must be the effective one, as the engine uses it: truncated to the market's
        money precision (an interval finer than that is ``0``). ``None`` when the book is not live
        or a side cannot be derived exactly (``_exact_side``).
        """
        if limit < 0 or interval < 0:
            raise ValueError("limit and interval must not be negative")
        if not self._live:
            return None
        # The engine merges in its own 34-digit context; bucket prices and sums must match it.
        with localcontext(ENGINE_CONTEXT):
            asks = self._exact_side(BookSide.ASKS, limit, interval)
            bids = self._exact_side(BookSide.BIDS, limit, interval)
        if asks is None or bids is None:
            return None
        return DepthView(asks=asks, bids=bids)

    def _exact_side(
        self, side: BookSide, limit: int, interval: Decimal
    ) -> tuple[Level, ...] | None:
        """One side of the view when the known levels determine it exactly.

        A side with fewer than ``upstream_limit`` levels is the exchange's whole side (its top-N
        had room to spare), so every view of it is exact. A full side may hide deeper levels;
        they can only fall into its last known bucket or later ones (buckets are monotone in
        book order), so the view is exact iff it needs no more than the complete buckets.
        """
        levels = self._sides[side]
        if len(levels) < self._upstream_limit:
            return merge_side(levels, side, interval, limit)
        if limit > complete_buckets(levels, side, interval):
            return None
        return merge_side(levels, side, interval, limit)


def complete_buckets(levels: tuple[Level, ...], side: BookSide, interval: Decimal) -> int:
    """How many leading merged levels of ``levels`` no deeper, unknown level could change.

    Interval 0: every known level is its own, complete bucket. Otherwise every bucket strictly
    before the deepest level's bucket is complete. The deepest bucket is complete too when the
    deepest price is its bucket's edge: an ask bucket ``B`` holds prices in ``(B - i, B]`` and a
    bid bucket ``[B, B + i)``, so any deeper price lands in a later bucket.
    """
    if not levels or interval <= 0:
        return len(levels)
    buckets = [bucket_price(price, side, interval) for price, _ in levels]
    distinct = 1 + sum(1 for before, after in pairwise(buckets) if before != after)
    if buckets[-1] == levels[-1][0]:
        return distinct
    return distinct - 1


def query_view(book: LocalBook, limit: int, interval: Decimal) -> dict[str, list[list[str]]] | None:
    """The ``depth.query`` result body from the live book; ``None``: ask the upstream instead."""
    view = book.view(limit, interval)
    return None if view is None else view.to_wire()


class ViewStream:
    """The ``depth.update`` frames of one downstream view ``(market, limit, interval text)``."""

    __slots__ = (
        "_clean_frame",
        "_full_every",
        "_last_full",
        "_view",
        "interval",
        "interval_text",
        "limit",
        "market",
    )

    def __init__(
        self, market: str, limit: int, interval_text: str, full_every: float = FULL_SNAPSHOT_EVERY
    ) -> None:
        interval = parse_decimal(interval_text)
        if interval is None or interval < 0 or limit < 0:
            raise ValueError("a depth view needs a limit >= 0 and a decimal interval >= 0")
        self.market = market
        self.limit = limit
        # The client's text is part of the key, as in Expie ("0.1" and "0.10" differ).
        self.interval_text = interval_text
        self.interval: Decimal = interval
        self._full_every = full_every
        self._view: DepthView | None = None
        self._last_full = 0.0
        self._clean_frame: bytes | None = None

    @property
    def current(self) -> DepthView | None:
        """The view the subscribers hold now; ``None`` before the first update or after a reset."""
        return self._view

    def update(self, view: DepthView, now: float) -> bytes | None:
        """The frame that moves every subscriber to ``view``, or ``None`` when nothing changed."""
        previous = self._view
        if previous is None:
            return self._clean(view, now)
        diff = diff_views(previous, view, self.limit)
        if not diff:
            return None
        if now - self._last_full >= self._full_every:
            return self._clean(view, now)
        self._view, self._clean_frame = view, None
        return encode_depth_update(False, diff, self.market)

    def snapshot_frame(self) -> bytes | None:
        """A clean frame of the current view (late joiner, resync); encoded once per view."""
        if self._view is None:
            return None
        if self._clean_frame is None:
            self._clean_frame = encode_depth_update(True, self._view.to_wire(), self.market)
        return self._clean_frame

    def reset(self) -> None:
        """Forget the view (upstream reconnect): the next update is a clean snapshot."""
        self._view, self._clean_frame = None, None

    def _clean(self, view: DepthView, now: float) -> bytes:
        self._view, self._clean_frame = view, None
        self._last_full = now
        frame = self.snapshot_frame()
        assert frame is not None
        return frame


def encode_depth_update(clean: bool, body: dict[str, list[list[str]]], market: str) -> bytes:
    """``{"method":"depth.update","params":[clean, body, market],"id":null}`` as Expie sends it."""
    return encode_notification("depth.update", [clean, cast(JsonValue, body), market]).encode()


def _parse_side(body: Mapping[str, object], side: BookSide, *, required: bool) -> list[Level]:
    raw = body.get(side.value)
    if raw is None:
        if required:
            raise BookError(f"clean depth snapshot without {side.value}")
        return []
    if not isinstance(raw, list):
        raise BookError(f"depth {side.value} is not a list")
    return [_parse_level(item, side) for item in raw]


def _parse_level(item: object, side: BookSide) -> Level:
    if not isinstance(item, list) or len(item) != 2:
        raise BookError(f"depth {side.value} level is not a [price, amount] pair")
    price_text, amount_text = item
    if not isinstance(price_text, str) or not isinstance(amount_text, str):
        raise BookError(f"depth {side.value} level is not a pair of strings")
    price, amount = parse_decimal(price_text), parse_decimal(amount_text)
    # A merged bid bucket can sit at price zero (Expie sends "0e-8" for it): a real level.
    if price is None or amount is None or price < 0 or amount < 0:
        raise BookError(f"depth {side.value} level {item!r} is not a valid price and amount")
    return price, amount
