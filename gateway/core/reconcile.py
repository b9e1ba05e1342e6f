"""How an order call whose outcome is unknown is matched to the exchange's own state.

Expie has no client order id, so a place is recognised by what it asked for: the same market,
side, type (limit when it had a price), amount and price, created within ``window`` seconds after
its intent was recorded (the intent is written before the order is sent; ``skew`` allows for the
exchange's clock being behind ours) and not already attributed to another order call (an order
with an owner was). When several orders of the account fit, the one created first is taken:
identical orders placed at the same moment by two users of one account can then be attributed
the wrong way round (the orders themselves are right; only who owns which may swap).

A cancel is recognised by its order: still pending means it did not take effect; in the
finished list, it did (or a fill ended the order first: the record says which); in neither and
never traded, it was cancelled untraded (Expie keeps no history of those).

Pure: records in, a verdict out; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

Record = Mapping[str, object]
LIMIT_TYPE, MARKET_TYPE = 1, 2
_SIDES = {"sell": 1, "buy": 2}


class Verdict(StrEnum):
    PLACED = "placed"  # the exchange holds (or held) the order: ``record`` is it
    NOT_PLACED = "not_placed"  # nothing fits: the order never reached the book
    CANCELLED = "cancelled"  # the order is no longer pending: ``record`` is its final state
    NOT_CANCELLED = "not_cancelled"  # the order is still pending: the cancel was not executed
    UNDECIDED = "undecided"  # the exchange's lists do not say yet: try again later


@dataclass(frozen=True, slots=True)
class Resolution:
    verdict: Verdict
    record: Record | None = None

    @property
    def order_id(self) -> int | None:
        order_id = None if self.record is None else self.record.get("id")
        return order_id if isinstance(order_id, int) and not isinstance(order_id, bool) else None


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    """A place as its audit intent recorded it (``OrderRequest.params``)."""

    market: str
    side: int
    order_type: int
    amount: Decimal
    price: Decimal | None
    intent_time: float

    @classmethod
    def from_params(cls, market: str, params: Mapping[str, str], intent_time: float
                    ) -> PlaceRequest:
        """``ValueError`` for parameters an order intent never holds."""
        side = _SIDES.get(params.get("side", ""))
        if side is None:
            raise ValueError(f"an intent with side {params.get('side')!r}")
        price = params.get("price")
        try:
            return cls(market, side, MARKET_TYPE if price is None else LIMIT_TYPE,
                       Decimal(params["amount"]), None if price is None else Decimal(price),
                       intent_time)
        except (KeyError, InvalidOperation) as exc:
            raise ValueError(f"an intent with unreadable amount or price: {exc}") from exc


def match_place(request: PlaceRequest, records: Iterable[Record], attributed: set[int], *,
                window: float, skew: float) -> Resolution:
    """The account's order that is ``request``, among ``records`` (pending and finished, in any
    order), leaving out orders ``attributed`` to other calls."""
    fitting = [record for record in records
               if _fits(request, record, window, skew) and record.get("id") not in attributed]
    if not fitting:
        return Resolution(Verdict.NOT_PLACED)
    return Resolution(Verdict.PLACED, min(fitting, key=_created))


def match_cancel(order_id: int, pending: Iterable[Record], finished: Iterable[Record],
                 traded: bool) -> Resolution:
    """Whether the cancel of ``order_id`` took effect, from the account's pending and finished
    orders of its market and whether the order ever traded (it has deals)."""
    if any(record.get("id") == order_id for record in pending):
        return Resolution(Verdict.NOT_CANCELLED)
    for record in finished:
        if record.get("id") == order_id:
            return Resolution(Verdict.CANCELLED, record)
    if not traded:
        # Expie keeps no history of an order cancelled before any fill: gone from the book
        # with no deals, it was cancelled untraded.
        return Resolution(Verdict.CANCELLED)
    return Resolution(Verdict.UNDECIDED)  # traded, yet not listed: beyond the scan, or late


def _fits(request: PlaceRequest, record: Record, window: float, skew: float) -> bool:
    created = _created(record)
    if not request.intent_time - skew <= created <= request.intent_time + window + skew:
        return False
    if (record.get("market"), record.get("side"), record.get("type")) != (
            request.market, request.side, request.order_type):
        return False
    if _decimal(record.get("amount")) != request.amount:
        return False
    return request.price is None or _decimal(record.get("price")) == request.price


def _created(record: Record) -> float:
    ctime = record.get("ctime")
    return float(ctime) if isinstance(ctime, int | float) and not isinstance(ctime, bool) else 0.0


def _decimal(value: object) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None
