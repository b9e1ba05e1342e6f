"""Pre-trade risk checks: each limit refuses what breaks it, with a message naming it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.core.orders import OrderRequest, Side
from gateway.core.risk import check_order, needs_reference, notional
from gateway.errors import RiskLimitExceeded
from gateway.order_settings import RiskPolicy


def order(side: Side = Side.BUY, amount: str = "2", price: str | None = "0.5") -> OrderRequest:
    return OrderRequest("BCCBTC", side, Decimal(amount), None if price is None else Decimal(price))


def refusal(candidate: OrderRequest, policy: RiskPolicy, reference: str | None = None) -> str:
    with pytest.raises(RiskLimitExceeded) as caught:
        check_order(candidate, policy, None if reference is None else Decimal(reference))
    assert caught.value.status == 403
    assert caught.value.code == "risk_limit_exceeded"
    return caught.value.message


def test_an_order_within_every_limit_passes() -> None:
    policy = RiskPolicy(Decimal(2), Decimal(1), Decimal(10))
    check_order(order(amount="2", price="0.5"), policy, Decimal("0.5"))


def test_no_policy_means_no_check_and_no_reference_needed() -> None:
    check_order(order(amount="1000000", price="99"), RiskPolicy(), None)
    assert not needs_reference(order(), RiskPolicy())


def test_the_amount_limit_names_the_amount_and_the_limit() -> None:
    message = refusal(order(amount="2.5"), RiskPolicy(max_order_amount=Decimal(2)))
    assert "2.5" in message
    assert "maximum order amount 2" in message


@pytest.mark.parametrize(("candidate", "reference", "expected"), [
    (order(Side.BUY, "2", "0.5"), None, Decimal("1.0")),     # limit: amount x price
    (order(Side.SELL, "2", "0.5"), None, Decimal("1.0")),
    (order(Side.BUY, "3", None), None, Decimal(3)),         # market buy: amount is money
    (order(Side.SELL, "2", None), Decimal("0.4"), Decimal("0.8")),  # market sell: x last price
    (order(Side.SELL, "2", None), None, None),
])
def test_notional_is_the_money_an_order_commits(
    candidate: OrderRequest, reference: Decimal | None, expected: Decimal | None
) -> None:
    assert notional(candidate, reference) == expected


def test_the_notional_limit_refuses_a_larger_order() -> None:
    message = refusal(order(amount="3", price="0.5"), RiskPolicy(max_notional=Decimal(1)))
    assert "notional 1.5" in message


def test_a_market_sell_needs_a_reference_price_for_the_notional_limit() -> None:
    policy = RiskPolicy(max_notional=Decimal(1))
    market_sell = order(Side.SELL, "2", None)
    assert needs_reference(market_sell, policy)
    assert "no reference price" in refusal(market_sell, policy)
    assert "notional 1.2" in refusal(market_sell, policy, "0.6")
    check_order(market_sell, policy, Decimal("0.5"))


@pytest.mark.parametrize(("price", "allowed"), [
    ("0.55", True), ("0.45", True), ("0.5501", False), ("0.4499", False)])
def test_the_price_band_is_measured_from_the_last_price(price: str, allowed: bool) -> None:
    policy = RiskPolicy(price_band_percent=Decimal(10))
    candidate = order(price=price)
    assert needs_reference(candidate, policy)
    if allowed:
        check_order(candidate, policy, Decimal("0.5"))
    else:
        assert "band on BCCBTC is 10%" in refusal(candidate, policy, "0.5")


def test_a_band_without_a_reference_price_refuses_rather_than_skips() -> None:
    assert "no reference price" in refusal(order(), RiskPolicy(price_band_percent=Decimal(5)))


def test_market_orders_have_no_price_to_band() -> None:
    check_order(order(price=None), RiskPolicy(price_band_percent=Decimal(1)), None)
