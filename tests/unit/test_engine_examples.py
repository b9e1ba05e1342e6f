"""The matching engine by example: the notes' worked example and each rule of sections 4 and 5.

Every test drives ``Exchange`` directly (no sockets) with a fake clock and checks what a user of
the exchange would see: balances, order objects, history rows, the book, the deal tape, error codes.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from simulator.config import FeeRates, parse_config
from simulator.engine.errors import EngineError
from simulator.engine.exchange import Exchange
from simulator.engine.model import Order, Role, Side
from simulator.engine.opening import open_exchange
from tests.clock import FakeClock
from tests.engine_support import observable_state

SELLER, BUYER, CAROL, DAVE, BROKE = 1, 2, 3, 4, 5
USERS = (SELLER, BUYER, CAROL, DAVE, BROKE)
SELL, BUY = int(Side.SELL), int(Side.BUY)
START = 1_700_000_000.0

CONFIG: dict[str, Any] = {
    "control_token": "control",
    "assets": {"BTC": {}, "ETH": {}, "BCC": {}},
    "markets": [
        {
            "name": "ETHBTC", "stock": "ETH", "money": "BTC",
            "stock_precision": 4, "money_precision": 6, "engine_money_precision": 8,
            "maker_fee_rate": "0.001", "taker_fee_rate": "0.002", "order_min_vol": "0.001",
            "market_order_enabled": True, "market_order_min_money": "0.001",
            "initial_price": "0.15",
        },
        {
            "name": "BCCBTC", "stock": "BCC", "money": "BTC",
            "stock_precision": 4, "money_precision": 6, "engine_money_precision": 8,
            "maker_fee_rate": "0", "taker_fee_rate": "0", "order_min_vol": "0.001",
            "market_order_enabled": False, "market_order_min_money": "0.001",
            "initial_price": "0.1345",
        },
    ],
    "accounts": [
        {"name": "seller", "user_id": SELLER, "token": "t1",
         "balances": {"ETH": "10", "BCC": "10"}},
        {"name": "buyer", "user_id": BUYER, "token": "t2", "balances": {"BTC": "10"}},
        {"name": "carol", "user_id": CAROL, "token": "t3",
         "balances": {"ETH": "10", "BTC": "10", "BCC": "10"}},
        {"name": "dave", "user_id": DAVE, "token": "t4", "balances": {"ETH": "10", "BTC": "10"},
         "fee_rates": {"maker": "0.0006", "taker": "0.0006"}},
    ],
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def ex(clock: FakeClock) -> Exchange:
    return open_exchange(parse_config(CONFIG), clock)


def bal(ex: Exchange, user: int, asset: str) -> tuple[Decimal, Decimal]:
    return ex.balances.available(user, asset), ex.balances.frozen(user, asset)


def D(text: str) -> Decimal:  # reads like a literal
    return Decimal(text)


def rejected(ex: Exchange, call: Callable[..., object], *args: object) -> EngineError:
    """The error ``call(*args)`` raises; it must leave everything as it was."""
    before = observable_state(ex, USERS)
    with pytest.raises(EngineError) as caught:
        call(*args)
    assert observable_state(ex, USERS) == before
    return caught.value


def levels(ex: Exchange, market: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    view = ex.markets[market].depth(100, D("0"))
    return ([(str(p.normalize()), str(a.normalize())) for p, a in view.asks],
            [(str(p.normalize()), str(a.normalize())) for p, a in view.bids])


# --- 4.2: the worked example ---------------------------------------------------------------


def test_worked_example(ex: Exchange) -> None:
    maker = ex.put_limit(SELLER, "ETHBTC", SELL, "2", "0.15", "")
    assert bal(ex, SELLER, "ETH") == (D("8"), D("2"))
    taker = ex.put_limit(BUYER, "ETHBTC", BUY, "3", "0.16", "")

    # Buyer: money -0.3 for the fill, 0.16 frozen for the rest; stock +2 - 0.004 fee.
    assert bal(ex, BUYER, "BTC") == (D("10") - D("0.3") - D("0.16"), D("0.16"))
    assert bal(ex, BUYER, "ETH") == (D("1.996"), D("0"))
    # Seller: frozen stock -2, money +0.3 - 0.0003 fee.
    assert bal(ex, SELLER, "ETH") == (D("8"), D("0"))
    assert bal(ex, SELLER, "BTC") == (D("0.2997"), D("0"))
    assert ex.collected_fees["ETH"] == D("0.004")
    assert ex.collected_fees["BTC"] == D("0.0003")

    wire = taker.to_wire()
    assert (wire["left"], wire["deal_stock"], wire["deal_money"], wire["deal_fee"]) == (
        "1", "2", "0.3", "0.004")
    assert (wire["price"], wire["amount"], wire["taker_fee"], wire["maker_fee"]) == (
        "0.16", "3", "0.002", "0.001")
    assert maker.to_wire()["deal_fee"] == "0.0003"
    assert maker.left == 0
    assert [o.id for o in ex.pending(BUYER, "ETHBTC")] == [taker.id]
    assert ex.pending(SELLER, "ETHBTC") == []
    assert [o.id for o in ex.finished(SELLER, "ETHBTC")] == [maker.id]
    assert levels(ex, "ETHBTC") == ([], [("0.16", "1")])
    deal = ex.markets["ETHBTC"].deals_since(0, 10)[0].to_wire()
    assert (deal["price"], deal["amount"], deal["type"]) == ("0.15", "2", "buy")
    assert ex.markets["ETHBTC"].last_price == D("0.15")


# --- priority and price --------------------------------------------------------------------


def test_equal_price_older_order_first(ex: Exchange) -> None:
    older = ex.put_limit(CAROL, "ETHBTC", SELL, "1", "0.15", "")
    newer = ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.15", "")
    taker = ex.put_limit(BUYER, "ETHBTC", BUY, "1.5", "0.15", "")
    assert [d.deal_order_id for d in reversed(ex.order_deals(taker.id))] == [older.id, newer.id]
    assert older.left == 0
    assert newer.left == D("0.5")
    assert levels(ex, "ETHBTC") == ([("0.15", "0.5")], [])


def test_better_price_first_on_both_sides(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.16", "")
    cheap = ex.put_limit(CAROL, "ETHBTC", SELL, "1", "0.15", "")
    taker = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.16", "")
    assert [d.deal_order_id for d in ex.order_deals(taker.id)] == [cheap.id]

    ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.13", "")
    high = ex.put_limit(CAROL, "BCCBTC", BUY, "1", "0.14", "")
    seller = ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.12", "")
    assert [d.deal_order_id for d in ex.order_deals(seller.id)] == [high.id]


def test_trades_at_the_maker_price(ex: Exchange) -> None:
    ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.15", "")
    taker = ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.10", "")
    assert taker.deal_money == D("0.15")
    assert bal(ex, SELLER, "BTC") == (D("0.15"), D("0"))

    ex.put_limit(CAROL, "BCCBTC", SELL, "1", "0.12", "")
    before = ex.balances.available(BUYER, "BTC")
    buy = ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.20", "")
    assert [str(d.price.normalize()) for d in ex.order_deals(buy.id)] == ["0.12"]
    assert ex.balances.available(BUYER, "BTC") == before - D("0.12")  # not the limit 0.20


def test_taker_walks_levels_up_to_its_limit_and_rests_the_rest(ex: Exchange) -> None:
    for price in ("0.15", "0.16", "0.17"):
        ex.put_limit(SELLER, "BCCBTC", SELL, "1", price, "")
    taker = ex.put_limit(BUYER, "BCCBTC", BUY, "2.5", "0.16", "")
    assert taker.deal_stock == 2
    assert taker.deal_money == D("0.31")
    assert taker.left == D("0.5")
    assert levels(ex, "BCCBTC") == ([("0.17", "1")], [("0.16", "0.5")])
    # The resting remainder freezes left * its own price.
    assert bal(ex, BUYER, "BTC") == (D("10") - D("0.31") - D("0.08"), D("0.08"))


def test_maker_partially_filled_stays_with_reduced_left(ex: Exchange, clock: FakeClock) -> None:
    maker = ex.put_limit(SELLER, "ETHBTC", SELL, "5", "0.15", "")
    fill_time = clock.advance(3)
    ex.put_limit(BUYER, "ETHBTC", BUY, "2", "0.15", "")
    assert (maker.left, maker.deal_stock, maker.mtime) == (D("3"), D("2"), fill_time)
    assert maker.ctime == START
    assert bal(ex, SELLER, "ETH") == (D("5"), D("3"))
    assert levels(ex, "ETHBTC") == ([("0.15", "3")], [])


def test_self_trade_is_not_prevented(ex: Exchange) -> None:
    ex.put_limit(CAROL, "BCCBTC", SELL, "1", "0.15", "")
    order = ex.put_limit(CAROL, "BCCBTC", BUY, "1", "0.15", "")
    assert order.left == 0
    assert bal(ex, CAROL, "BCC") == (D("10"), D("0"))
    assert bal(ex, CAROL, "BTC") == (D("10"), D("0"))


def test_user_fee_override_and_fee_precision(ex: Exchange) -> None:
    order = ex.put_limit(DAVE, "ETHBTC", SELL, "1", "0.2", "")
    assert (order.taker_fee, order.maker_fee) == (D("0.0006"), D("0.0006"))
    ex.set_fee_rates(CAROL, FeeRates(maker=D("0.00129"), taker=D("0.00999")))
    order = ex.put_limit(CAROL, "ETHBTC", BUY, "1", "0.1", "")
    wire = order.to_wire()
    assert (wire["maker_fee"], wire["taker_fee"]) == ("0.0012", "0.0099")  # truncated to 4 dp
    plain = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.1", "")
    assert (plain.taker_fee, plain.maker_fee) == (D("0.002"), D("0.001"))


# --- 4.2.1: parsing and validation ---------------------------------------------------------


def test_amount_and_price_are_truncated_not_rounded(ex: Exchange) -> None:
    order = ex.put_limit(BUYER, "BCCBTC", BUY, "1.23456789", "0.123456789", "")
    assert (order.amount, order.price) == (D("1.2345"), D("0.12345678"))
    assert order.to_wire()["amount"] == "1.2345"
    assert order.to_wire()["price"] == "0.12345678"  # engine precision 8, not the advertised 6
    assert bal(ex, BUYER, "BTC")[1] == D("1.2345") * D("0.12345678")
    assert levels(ex, "BCCBTC")[1] == [("0.12345678", "1.2345")]


@pytest.mark.parametrize(
    ("market", "side", "amount", "price", "source"),
    [
        ("ETHBTC", 0, "1", "0.15", ""),
        ("ETHBTC", 3, "1", "0.15", ""),
        ("ETHBTC", SELL, "0", "0.15", ""),
        ("ETHBTC", SELL, "-1", "0.15", ""),
        ("ETHBTC", SELL, "0.00009", "0.15", ""),  # truncates to 0 at 4 decimals
        ("ETHBTC", SELL, "abc", "0.15", ""),
        ("ETHBTC", SELL, "NaN", "0.15", ""),
        ("ETHBTC", SELL, "Infinity", "0.15", ""),
        ("ETHBTC", SELL, "1_0", "0.15", ""),
        ("ETHBTC", SELL, "1e40", "0.15", ""),  # beyond the engine's 34 digits
        ("ETHBTC", SELL, "1", "0", ""),
        ("ETHBTC", SELL, "1", "-0.15", ""),
        ("ETHBTC", SELL, "1", "0.000000009", ""),  # truncates to 0 at 8 decimals
        ("ETHBTC", SELL, "1", "", ""),
        ("ETHBTC", SELL, "1", "1e99", ""),
        ("ETHBTC", SELL, "1", "0.15", "x" * 31),
        ("XYZBTC", SELL, "1", "0.15", ""),
    ],
)
def test_invalid_argument(
    ex: Exchange, market: str, side: int, amount: str, price: str, source: str
) -> None:
    error = rejected(ex, lambda: ex.put_limit(SELLER, market, side, amount, price, source))
    assert (error.code, error.message) == (1, "invalid argument")


def test_source_of_thirty_characters_is_accepted(ex: Exchange) -> None:
    assert ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.15", "x" * 30).source == "x" * 30


def test_invalid_argument_is_checked_before_balance(ex: Exchange) -> None:
    error = rejected(ex, lambda: ex.put_limit(BROKE, "ETHBTC", 3, "1", "0.15", ""))
    assert error.code == 1


def test_balance_is_checked_before_amount_too_small(ex: Exchange) -> None:
    for side in (SELL, BUY):
        error = rejected(ex, ex.put_limit, BROKE, "ETHBTC", side, "0.0005", "0.15", "")
        assert (error.code, error.message) == (10, "balance not enough")
    error = rejected(ex, lambda: ex.put_limit(SELLER, "ETHBTC", SELL, "0.0009", "0.15", ""))
    assert (error.code, error.message) == (11, "amount too small")
    error = rejected(ex, lambda: ex.put_limit(BUYER, "ETHBTC", BUY, "0.0009", "0.15", ""))
    assert error.code == 11
    assert ex.put_limit(SELLER, "ETHBTC", SELL, "0.001", "0.15", "").amount == D("0.001")


def test_balance_check_is_exact_and_excludes_fees(ex: Exchange) -> None:
    ex.deposit(BROKE, "BTC", D("0.3"), 9001)
    error = rejected(ex, lambda: ex.put_limit(BROKE, "ETHBTC", BUY, "2.0001", "0.15", ""))
    assert error.code == 10
    order = ex.put_limit(BROKE, "ETHBTC", BUY, "2", "0.15", "")
    assert bal(ex, BROKE, "BTC") == (D("0"), D("0.3"))
    assert order.left == 2
    error = rejected(ex, lambda: ex.put_limit(SELLER, "ETHBTC", SELL, "10.0001", "0.2", ""))
    assert error.code == 10
    ex.put_limit(SELLER, "ETHBTC", SELL, "10", "0.2", "")
    assert bal(ex, SELLER, "ETH") == (D("0"), D("10"))


def test_frozen_funds_are_not_available_for_another_order(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "6", "0.2", "")
    error = rejected(ex, lambda: ex.put_limit(SELLER, "ETHBTC", SELL, "5", "0.3", ""))
    assert error.code == 10


# --- 4.3: market orders --------------------------------------------------------------------


def test_market_order_errors(ex: Exchange) -> None:
    for side in (SELL, BUY):
        error = rejected(ex, ex.put_market, CAROL, "ETHBTC", side, "1", "")
        assert (error.code, error.message) == (12, "no enough trader")
        # Balance first, then the empty book.
        error = rejected(ex, ex.put_market, BROKE, "ETHBTC", side, "1", "")
        assert (error.code, error.message) == (10, "balance not enough")
    error = rejected(ex, lambda: ex.put_market(CAROL, "BCCBTC", BUY, "1", ""))
    assert error.code == 1
    error = rejected(ex, lambda: ex.put_market(CAROL, "ETHBTC", 3, "1", ""))
    assert error.code == 1
    error = rejected(ex, lambda: ex.put_market(CAROL, "ETHBTC", BUY, "0.00001", ""))
    assert error.code == 1


def test_market_order_amount_too_small(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "2", "")
    ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.15", "")
    # Buy: below best_ask * min_amount (2 * 0.001), though above market_order_min_money.
    error = rejected(ex, lambda: ex.put_market(CAROL, "ETHBTC", BUY, "0.0019", ""))
    assert (error.code, error.message) == (11, "amount too small")
    # Sell: below min_amount.
    error = rejected(ex, lambda: ex.put_market(CAROL, "ETHBTC", SELL, "0.0009", ""))
    assert error.code == 11
    # Sell: above min_amount but worth less than market_order_min_money at the best bid.
    error = rejected(ex, lambda: ex.put_market(CAROL, "ETHBTC", SELL, "0.006", ""))
    assert error.code == 11
    assert ex.put_market(CAROL, "ETHBTC", BUY, "0.002", "").deal_stock == D("0.001")


def test_market_buy_spends_money_floor_per_level_and_drops_the_rest(
    ex: Exchange, clock: FakeClock
) -> None:
    first = ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.15", "")
    second = ex.put_limit(CAROL, "ETHBTC", SELL, "1", "0.7", "")
    now = clock.advance(5)
    order = ex.put_market(BUYER, "ETHBTC", BUY, "0.20009", "")  # money, truncated to 4 dp
    assert order.amount == D("0.2")
    # 1 @ 0.15 (0.15 spent), then floor(0.05 / 0.7) = 0.0714 @ 0.7 (0.04998); 0.00002 unspent.
    assert order.deal_stock == D("1.0714")
    assert order.deal_money == D("0.19998")
    assert order.left == D("0.00002")
    assert order.left + order.deal_money == order.amount
    assert order.deal_fee == D("1.0714") * D("0.002")
    assert (order.ftime, order.mtime) == (now, now)
    wire = order.to_wire()
    assert (wire["type"], wire["price"], wire["maker_fee"], wire["left"]) == (
        2, "0", "0", "0.00002")
    assert bal(ex, BUYER, "BTC") == (D("10") - D("0.19998"), D("0"))
    assert bal(ex, BUYER, "ETH") == (D("1.0714") - D("0.0021428"), D("0"))
    assert first.left == 0
    assert second.left == D("0.9286")
    assert ex.pending(BUYER, "ETHBTC") == []
    assert ex.finished(BUYER, "ETHBTC") == [order]
    assert order.to_finished_wire()["price"] == "0"


def test_market_buy_amount_is_money_truncated_to_stock_precision(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.5", "")
    order = ex.put_market(BUYER, "ETHBTC", BUY, "0.0012", "")
    assert order.deal_stock == D("0.0024")
    assert order.left == 0
    order = ex.put_market(BUYER, "ETHBTC", BUY, "0.00104", "")  # truncated to 0.001
    assert (order.deal_stock, order.deal_money, order.left) == (D("0.002"), D("0.001"), D("0"))


def test_market_sell_walks_bids_at_any_price(ex: Exchange) -> None:
    for price in ("0.15", "0.1", "0.01"):
        ex.put_limit(BUYER, "ETHBTC", BUY, "1", price, "")
    order = ex.put_market(SELLER, "ETHBTC", SELL, "2.5", "")
    assert (order.deal_stock, order.deal_money, order.left) == (D("2.5"), D("0.255"), D("0"))
    assert order.deal_fee == D("0.255") * D("0.002")
    assert levels(ex, "ETHBTC") == ([], [("0.01", "0.5")])

    order = ex.put_market(CAROL, "ETHBTC", SELL, "2", "")  # more than the book holds
    assert (order.deal_stock, order.left) == (D("0.5"), D("1.5"))
    assert order.left + order.deal_stock == order.amount
    assert bal(ex, CAROL, "ETH") == (D("9.5"), D("0"))
    assert ex.finished(CAROL, "ETHBTC") == [order]
    assert levels(ex, "ETHBTC") == ([], [])


# --- 4.4: cancel ---------------------------------------------------------------------------


def test_cancel_errors(ex: Exchange) -> None:
    order = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.15", "")
    error = rejected(ex, lambda: ex.cancel(BUYER, "BCCBTC", order.id))
    assert (error.code, error.message) == (10, "order not found")
    error = rejected(ex, lambda: ex.cancel(BUYER, "ETHBTC", order.id + 1))
    assert error.code == 10
    error = rejected(ex, lambda: ex.cancel(SELLER, "ETHBTC", order.id))
    assert (error.code, error.message) == (11, "user not match")
    error = rejected(ex, lambda: ex.cancel(BUYER, "XYZBTC", order.id))
    assert error.code == 1
    ex.cancel(BUYER, "ETHBTC", order.id)
    error = rejected(ex, lambda: ex.cancel(BUYER, "ETHBTC", order.id))
    assert error.code == 10


def test_cancel_unfreezes_and_leaves_no_trace_without_fills(
    ex: Exchange, clock: FakeClock
) -> None:
    order = ex.put_limit(BUYER, "ETHBTC", BUY, "2", "0.15", "")
    assert bal(ex, BUYER, "BTC") == (D("9.7"), D("0.3"))
    clock.advance(60)
    cancelled = ex.cancel(BUYER, "ETHBTC", order.id)
    assert cancelled.mtime == START  # not the cancel time
    assert cancelled.to_wire()["left"] == "2"
    assert bal(ex, BUYER, "BTC") == (D("10"), D("0"))
    assert ex.pending(BUYER, "ETHBTC") == []
    assert ex.finished(BUYER, "ETHBTC") == []
    assert levels(ex, "ETHBTC") == ([], [])
    assert len(ex.balances.history(BUYER, "BTC")) == 1  # the deposit only


def test_cancel_after_partial_fill_is_finished_at_the_last_fill_time(
    ex: Exchange, clock: FakeClock
) -> None:
    order = ex.put_limit(SELLER, "ETHBTC", SELL, "3", "0.15", "")
    fill_time = clock.advance(10)
    ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.15", "")
    clock.advance(100)
    cancelled = ex.cancel(SELLER, "ETHBTC", order.id)
    assert cancelled.mtime == fill_time
    assert bal(ex, SELLER, "ETH") == (D("9"), D("0"))
    assert ex.finished(SELLER, "ETHBTC") == [order]
    row = order.to_finished_wire()
    assert (row["ftime"], row["ctime"], row["deal_stock"], row["amount"]) == (
        fill_time, START, "1", "3")
    assert "left" not in row
    assert "mtime" not in row


# --- 4.5: ids and ordering -----------------------------------------------------------------


def test_pending_newest_first_per_market(ex: Exchange) -> None:
    a = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.10", "")
    b = ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.10", "")
    c = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.12", "")
    d = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.11", "")
    assert [o.id for o in ex.pending(BUYER, "ETHBTC")] == [d.id, c.id, a.id]
    assert [o.id for o in ex.pending(BUYER, "BCCBTC")] == [b.id]
    assert ex.pending(SELLER, "ETHBTC") == []
    error = rejected(ex, lambda: ex.pending(BUYER, "XYZBTC"))
    assert error.code == 1


def test_finished_newest_id_first_even_when_an_older_order_finishes_later(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.16", "")
    old = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.14", "")
    new = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.16", "")  # fills at once
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.14", "")  # now the old one fills
    assert [o.id for o in ex.finished(BUYER, "ETHBTC")] == [new.id, old.id]


def test_ids_are_global_and_rejections_take_none(ex: Exchange) -> None:
    a = ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.15", "")
    rejected(ex, lambda: ex.put_limit(BROKE, "ETHBTC", SELL, "1", "0.15", ""))
    b = ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.15", "")
    c = ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.15", "")
    d = ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.15", "")
    assert [a.id, b.id, c.id, d.id] == [1, 2, 3, 4]
    bcc = ex.markets["BCCBTC"].deals_since(0, 10)
    eth = ex.markets["ETHBTC"].deals_since(0, 10)
    assert [deal.id for deal in bcc + eth] == [1, 2]


def test_order_deals_from_both_sides(ex: Exchange, clock: FakeClock) -> None:
    maker = ex.put_limit(SELLER, "ETHBTC", SELL, "2", "0.15", "")
    clock.advance(1)
    first = ex.put_limit(BUYER, "ETHBTC", BUY, "0.5", "0.15", "")
    clock.advance(1)
    second = ex.put_limit(DAVE, "ETHBTC", BUY, "1.5", "0.15", "")

    maker_deals = ex.order_deals(maker.id)
    assert [d.deal_order_id for d in maker_deals] == [second.id, first.id]  # newest first
    assert all(d.role is Role.MAKER and d.user == SELLER for d in maker_deals)
    assert [d.fee for d in maker_deals] == [D("0.225") * D("0.001"), D("0.075") * D("0.001")]

    (taker_deal,) = ex.order_deals(first.id)
    assert (taker_deal.role, taker_deal.deal_order_id, taker_deal.user) == (
        Role.TAKER, maker.id, BUYER)
    assert taker_deal.id == maker_deals[1].id
    assert taker_deal.to_wire() == {
        "id": taker_deal.id, "time": START + 1, "user": BUYER, "role": 2, "price": "0.15",
        "amount": "0.5", "deal": "0.075", "fee": "0.001", "deal_order_id": maker.id,
    }
    (dave_deal,) = ex.order_deals(second.id)
    assert dave_deal.fee == D("1.5") * D("0.0006")
    assert ex.order_deals(999) == []


# --- 4.6: balances and their history ---------------------------------------------------------


def test_trade_history_rows(ex: Exchange, clock: FakeClock) -> None:
    maker = ex.put_limit(SELLER, "ETHBTC", SELL, "2", "0.15", "")
    clock.advance(2)
    taker = ex.put_limit(BUYER, "ETHBTC", BUY, "3", "0.16", "")

    def rows(user: int, asset: str) -> list[dict[str, object]]:
        return [row.to_wire() for row in ex.balances.history(user, asset)]

    base = {"time": START + 2, "business": "trade"}
    buyer_detail = {"a": "2", "i": taker.id, "m": "ETHBTC", "p": "0.15"}
    seller_detail = {"a": "2", "i": maker.id, "m": "ETHBTC", "p": "0.15"}
    assert rows(BUYER, "BTC")[1:] == [
        {**base, "asset": "BTC", "change": "-0.3", "balance": "9.7", "detail": buyer_detail}]
    assert rows(BUYER, "ETH") == [
        {**base, "asset": "ETH", "change": "2", "balance": "2", "detail": buyer_detail},
        {**base, "asset": "ETH", "change": "-0.004", "balance": "1.996",
         "detail": {**buyer_detail, "f": "0.002"}},
    ]
    assert rows(SELLER, "ETH")[1:] == [
        {**base, "asset": "ETH", "change": "-2", "balance": "8", "detail": seller_detail}]
    assert rows(SELLER, "BTC") == [
        {**base, "asset": "BTC", "change": "0.3", "balance": "0.3", "detail": seller_detail},
        {**base, "asset": "BTC", "change": "-0.0003", "balance": "0.2997",
         "detail": {**seller_detail, "f": "0.001"}},
    ]


def test_zero_fee_market_writes_no_fee_rows(ex: Exchange) -> None:
    ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.15", "")
    ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.15", "")
    assert [row.business for row in ex.balances.history(BUYER, "BCC")] == ["trade"]
    assert [row.change for row in ex.balances.history(SELLER, "BTC")] == [D("0.15")]
    assert ex.collected_fees["BTC"] == 0


def test_deposit_rows_and_repeats(ex: Exchange, clock: FakeClock) -> None:
    now = clock.advance(7)
    ex.deposit(BROKE, "BTC", D("1.5"), 500)
    ex.deposit(BROKE, "BTC", D("0.25"), 501)
    assert bal(ex, BROKE, "BTC") == (D("1.75"), D("0"))
    first, second = (row.to_wire() for row in ex.balances.history(BROKE, "BTC"))
    assert first == {"time": now, "asset": "BTC", "business": "deposit", "change": "1.5",
                     "balance": "1.5", "detail": {"timestamp_action_id": int(now), "id": 500}}
    assert (second["change"], second["balance"]) == ("0.25", "1.75")

    error = rejected(ex, lambda: ex.deposit(BROKE, "BTC", D("9"), 500))
    assert (error.code, error.message) == (10, "repeat update")
    ex.deposit(BROKE, "ETH", D("1"), 500)  # same business id, other asset: not a repeat
    ex.deposit(BUYER, "BTC", D("1"), 500)  # other user: not a repeat


def test_balance_update_rules(ex: Exchange) -> None:
    error = rejected(ex, lambda: ex.update_balance(BUYER, "BTC", "withdraw", 1, D("-10.01"), {}))
    assert (error.code, error.message) == (11, "balance not enough")
    ex.put_limit(BUYER, "ETHBTC", BUY, "1", "5", "")  # freezes 5 BTC
    error = rejected(ex, lambda: ex.update_balance(BUYER, "BTC", "withdraw", 2, D("-6"), {}))
    assert error.code == 11  # frozen funds cannot be withdrawn
    ex.update_balance(BUYER, "BTC", "withdraw", 3, D("-5"), {"note": "out"})
    assert bal(ex, BUYER, "BTC") == (D("0"), D("5"))
    row = ex.balances.history(BUYER, "BTC")[-1].to_wire()
    assert (row["business"], row["change"], row["balance"]) == ("withdraw", "-5", "5")
    assert row["detail"] == {"note": "out", "id": 3}
    for asset, change in (("DOGE", D("1")), ("BTC", D("0"))):
        error = rejected(ex, ex.update_balance, BUYER, asset, "deposit", 77, change, {})
        assert error.code == 1


# --- 4.7: rendering quirks ---------------------------------------------------------------------


def test_zero_fee_sums_render_in_exponent_form_in_engine_style(ex: Exchange) -> None:
    maker = ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.15", "")
    taker = ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.15", "")
    # Buyer fee = qty (4 dp) * rate (4 dp); seller fee = price (8 dp) * qty * rate.
    assert taker.to_wire()["deal_fee"] == "0e-8"
    assert maker.to_wire()["deal_fee"] == "0e-16"
    assert taker.to_wire()["left"] == "0"  # 4 decimals: no exponent
    assert taker.to_finished_wire()["deal_fee"] == "0"
    assert maker.to_finished_wire()["deal_fee"] == "0"
    unfilled = ex.put_limit(BUYER, "BCCBTC", BUY, "1", "0.1", "")
    assert unfilled.to_wire()["deal_fee"] == "0"


def test_tiny_fee_renders_as_exponent_in_engine_style_only(ex: Exchange) -> None:
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.15", "")
    taker = ex.put_limit(DAVE, "ETHBTC", BUY, "0.001", "0.15", "")
    assert taker.to_wire()["deal_fee"] == "6.0e-7"  # 0.0010 * 0.0006 = 0.00000060
    assert taker.to_finished_wire()["deal_fee"] == "0.0000006"
    assert ex.order_deals(taker.id)[0].to_wire()["fee"] == "0.0000006"
    fee_row = ex.balances.history(DAVE, "ETH")[-1].to_wire()
    assert fee_row["change"] == "-0.0000006"


TEXT_FIELDS = {"market", "source", "asset", "business", "detail"}


def _numbers(record: dict[str, object]) -> list[str]:
    """The string-valued numbers of a wire record (``detail`` is engine text stored verbatim)."""
    return [v for k, v in record.items() if k not in TEXT_FIELDS and isinstance(v, str)]


def test_history_rows_never_use_exponent_form(ex: Exchange) -> None:
    ex.put_limit(SELLER, "BCCBTC", SELL, "1", "0.00000011", "")
    ex.put_limit(BUYER, "BCCBTC", BUY, "0.5", "0.00000011", "")
    ex.put_limit(SELLER, "ETHBTC", SELL, "1", "0.00000011", "")
    ex.put_limit(DAVE, "ETHBTC", BUY, "0.001", "0.00000011", "")
    ex.deposit(BROKE, "BTC", D("0.00000001"), 42)
    orders: list[Order] = []
    for user in (SELLER, BUYER, DAVE):
        for market in ("ETHBTC", "BCCBTC"):
            orders += ex.finished(user, market) + ex.pending(user, market)
    engine_text = [n for o in orders for n in _numbers(o.to_wire())]
    assert "1.1e-7" in engine_text  # the engine style shows exponents for these values
    assert "0e-8" in engine_text
    history: list[dict[str, object]] = [o.to_finished_wire() for o in orders if o.ftime]
    history += [d.to_wire() for o in orders for d in ex.order_deals(o.id)]
    keys = ex.balances.keys()
    history += [row.to_wire() for key in keys for row in ex.balances.history(*key)]
    numbers = [n for record in history for n in _numbers(record)]
    assert "0.00000011" in numbers
    assert "0.00000001" in numbers
    assert [n for n in numbers if "e" in n] == []


# --- market data ------------------------------------------------------------------------------


def test_deal_tape_newest_first_since_an_id(ex: Exchange, clock: FakeClock) -> None:
    for price in ("0.15", "0.16", "0.17"):
        ex.put_limit(SELLER, "ETHBTC", SELL, "1", price, "")
    for _ in range(3):
        clock.advance(1)
        ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.2", "")
    ex.put_limit(BUYER, "ETHBTC", BUY, "1", "0.1", "")
    ex.put_limit(SELLER, "ETHBTC", SELL, "0.5", "0.1", "")
    tape = ex.markets["ETHBTC"]
    assert [d.id for d in tape.deals_since(0, 100)] == [4, 3, 2, 1]
    assert [d.id for d in tape.deals_since(1, 2)] == [4, 3]
    assert tape.deals_since(4, 10) == []
    assert [d.to_wire()["type"] for d in tape.deals_since(0, 100)] == ["sell", "buy", "buy", "buy"]
    assert tape.deals_since(0, 1)[0].to_wire() == {
        "id": 4, "time": START + 3, "price": "0.1", "amount": "0.5", "type": "sell"}


def test_day_range(ex: Exchange, clock: FakeClock) -> None:
    state = ex.markets["ETHBTC"]
    assert state.day_range(clock.now) == (D("0"), D("0"))
    for price in ("0.15", "0.17", "0.16"):
        ex.put_limit(SELLER, "ETHBTC", SELL, "1", price, "")
        ex.put_limit(BUYER, "ETHBTC", BUY, "1", price, "")
        clock.advance(60)
    assert state.day_range(clock.now) == (D("0.17"), D("0.15"))
    clock.advance(2 * 86_400)
    assert state.day_range(clock.now) == (D("0.16"), D("0.16"))  # the last price


def test_depth_merges_asks_up_and_bids_down(ex: Exchange) -> None:
    for price, amount in (("0.1501", "1"), ("0.1509", "2"), ("0.152", "3")):
        ex.put_limit(SELLER, "ETHBTC", SELL, amount, price, "")
    for price, amount in (("0.1499", "1"), ("0.1491", "2"), ("0.148", "3")):
        ex.put_limit(BUYER, "ETHBTC", BUY, amount, price, "")
    view = ex.markets["ETHBTC"].depth(10, D("0.001"))
    assert view.to_wire() == {
        "asks": [["0.151", "3"], ["0.152", "3"]],
        "bids": [["0.149", "3"], ["0.148", "3"]],
    }
    assert ex.markets["ETHBTC"].depth(1, D("0")).to_wire() == {
        "asks": [["0.1501", "1"]], "bids": [["0.1499", "1"]]}
    # Finer than the engine's price step: unmerged.
    assert ex.markets["ETHBTC"].depth(2, D("0.000000001")) == ex.markets["ETHBTC"].depth(2, D("0"))
    error = rejected(ex, lambda: ex.markets["ETHBTC"].depth(10, D("1e40")))
    assert error.code == 1
