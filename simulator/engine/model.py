"""Engine records: orders, deals (per order and per market), balance history rows.

Each record knows how Expie renders it: orders and market deals in the engine's number style,
rows read back from the history database (finished orders, order deals, balance history) in the
fixed-point history style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum

from gateway.core.decimals import Style, render

ZERO = Decimal(0)
# Newest rows kept per history (per user and asset, per user and market, orders with deals): a
# simulator with market activity runs for hours, and old history is what a client pages least.
HISTORY_KEPT = 10_000
ORDERS_WITH_DEALS_KEPT = 100_000


class Side(IntEnum):
    SELL = 1
    BUY = 2

    @property
    def wire(self) -> str:
        return "sell" if self is Side.SELL else "buy"


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2


def wire_time(seconds: float) -> float:
    """Times are float seconds with microsecond resolution."""
    return round(seconds, 6)


def db_decimal(value: Decimal, places: int) -> str:
    """A value as a DECIMAL(…, places) column gives it back, stripped."""
    quantum = Decimal(1).scaleb(-places)
    return render(value.quantize(quantum, rounding=ROUND_HALF_UP), Style.HISTORY)


@dataclass(slots=True, eq=False)
class Order:
    id: int
    market: str
    source: str
    type: OrderType
    side: Side
    user: int
    ctime: float
    price: Decimal
    amount: Decimal
    taker_fee: Decimal
    maker_fee: Decimal
    mtime: float = 0.0
    left: Decimal = ZERO
    deal_stock: Decimal = ZERO
    deal_money: Decimal = ZERO
    deal_fee: Decimal = ZERO
    freeze: Decimal = ZERO
    ftime: float | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "market": self.market,
            "source": self.source,
            "type": int(self.type),
            "side": int(self.side),
            "user": self.user,
            "ctime": wire_time(self.ctime),
            "mtime": wire_time(self.mtime),
            "price": render(self.price),
            "amount": render(self.amount),
            "taker_fee": render(self.taker_fee),
            "maker_fee": render(self.maker_fee),
            "left": render(self.left),
            "deal_stock": render(self.deal_stock),
            "deal_money": render(self.deal_money),
            "deal_fee": render(self.deal_fee),
        }

    def to_finished_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "market": self.market,
            "source": self.source,
            "type": int(self.type),
            "side": int(self.side),
            "user": self.user,
            "ctime": wire_time(self.ctime),
            "ftime": wire_time(self.ftime if self.ftime is not None else self.mtime),
            "price": db_decimal(self.price, 8),
            "amount": db_decimal(self.amount, 8),
            "taker_fee": db_decimal(self.taker_fee, 4),
            "maker_fee": db_decimal(self.maker_fee, 4),
            "deal_stock": db_decimal(self.deal_stock, 8),
            "deal_money": db_decimal(self.deal_money, 16),
            "deal_fee": db_decimal(self.deal_fee, 16),
        }


class Role(IntEnum):
    MAKER = 1
    TAKER = 2


@dataclass(frozen=True, slots=True)
class OrderDeal:
    """One fill seen from one order's side (``GET /markets/{m}/orders/{id}``)."""

    id: int
    time: float
    user: int
    role: Role
    price: Decimal
    amount: Decimal
    deal: Decimal
    fee: Decimal
    deal_order_id: int

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "time": wire_time(self.time),
            "user": self.user,
            "role": int(self.role),
            "price": db_decimal(self.price, 8),
            "amount": db_decimal(self.amount, 8),
            "deal": db_decimal(self.deal, 16),
            "fee": db_decimal(self.fee, 16),
            "deal_order_id": self.deal_order_id,
        }


@dataclass(frozen=True, slots=True)
class MarketDeal:
    """One fill in a market's public tape (``deals.*``); ``taker_side`` is the aggressor."""

    id: int
    time: float
    price: Decimal
    amount: Decimal
    taker_side: Side

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "time": wire_time(self.time),
            "price": render(self.price),
            "amount": render(self.amount),
            "type": self.taker_side.wire,
        }


@dataclass(frozen=True, slots=True)
class BalanceRow:
    time: float
    asset: str
    business: str
    change: Decimal
    balance: Decimal
    detail: dict[str, object] = field(default_factory=dict)

    def to_wire(self) -> dict[str, object]:
        return {
            "time": wire_time(self.time),
            "asset": self.asset,
            "business": self.business,
            "change": db_decimal(self.change, 8),
            "balance": db_decimal(self.balance, 16),
            "detail": self.detail,
        }
