"""Pre-trade risk checks of one order against a user's policy for its market. Pure.

- ``max_order_amount``: the order's ``amount`` as the exchange reads it (stock for limit orders and
  market sells, money for market buys — Expie's market buy spends ``amount`` of money).
- ``max_notional``: the money the order commits: amount x price for limit orders, amount for
  market buys, amount x reference price (the last trade) for market sells.
- ``price_band_percent``: a limit price more than that many percent away from the reference price
  is refused (a fat-finger guard); market orders have no price to check.

When a check needs the reference price and there is none (no trade yet, or the ticker cannot be
read), the order is refused: a desk that turned a check on wants it enforced, not skipped.
"""

from __future__ import annotations

from decimal import Decimal

from gateway.core.decimals import Style, render
from gateway.core.orders import OrderRequest, Side
from gateway.errors import RiskLimitExceeded
from gateway.order_settings import RiskPolicy

HUNDRED = Decimal(100)


def needs_reference(order: OrderRequest, policy: RiskPolicy) -> bool:
    """Whether checking ``order`` needs the market's last price."""
    if order.price is not None:
        return policy.price_band_percent is not None
    return policy.max_notional is not None and order.side is Side.SELL


def check_order(order: OrderRequest, policy: RiskPolicy, reference: Decimal | None) -> None:
    """Raises ``RiskLimitExceeded`` naming the first limit ``order`` breaks."""
    limit = policy.max_order_amount
    if limit is not None and order.amount > limit:
        raise RiskLimitExceeded(
            f"amount {order.amount} exceeds this user's maximum order amount {limit} on "
            f"{order.market}")
    _check_notional(order, policy, reference)
    _check_band(order, policy, reference)


def notional(order: OrderRequest, reference: Decimal | None) -> Decimal | None:
    """The money ``order`` commits; ``None`` when that needs a reference price there is not."""
    if order.price is not None:
        return order.amount * order.price
    if order.side is Side.BUY:
        return order.amount
    return order.amount * reference if reference else None


def _check_notional(order: OrderRequest, policy: RiskPolicy, reference: Decimal | None) -> None:
    limit = policy.max_notional
    if limit is None:
        return
    value = notional(order, reference)
    if value is None:
        raise RiskLimitExceeded(
            f"no reference price for {order.market}: the notional of a market sell cannot be "
            "checked against this user's maximum notional")
    if value > limit:
        raise RiskLimitExceeded(
            f"notional {_plain(value)} exceeds this user's maximum notional {limit} on "
            f"{order.market}")


def _check_band(order: OrderRequest, policy: RiskPolicy, reference: Decimal | None) -> None:
    band = policy.price_band_percent
    if band is None or order.price is None:
        return
    if not reference:
        raise RiskLimitExceeded(
            f"no reference price for {order.market}: the price band of {band}% cannot be checked")
    distance = abs(order.price - reference) * HUNDRED / reference
    if distance > band:
        raise RiskLimitExceeded(
            f"price {order.price} is {distance.quantize(Decimal('0.01'))}% away from the last "
            f"price {reference}; this user's band on {order.market} is {band}%")


def _plain(value: Decimal) -> str:
    return render(value, Style.HISTORY)
