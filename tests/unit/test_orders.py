"""Placing an order: the body parsed, checked against the market's rules, normalized."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.orders import (
    FORM_CONTENT_TYPE,
    InvalidOrder,
    MarketRules,
    OrderRequest,
    Side,
    market_rules,
    parse_order_fields,
    validate_order,
)
from gateway.errors import BadRequest

JSON = "application/json"

# The shape of the reference's GET /markets example, with market orders on for BTGBTC.
MARKETS_BODY = json.dumps([
    {"name": "BCCBTC", "market_order_min_money": "0.001", "stock_precision": 4, "money": "BTC",
     "maker_fee_rate": 0, "order_min_vol": "0.001", "money_precision": 6,
     "market_order_enabled": False, "stock": "BCC", "enabled": True, "taker_fee_rate": 0},
    {"name": "BTGBTC", "market_order_min_money": "0.01", "stock_precision": 4, "money": "BTC",
     "maker_fee_rate": 0.001, "order_min_vol": "0.001", "money_precision": 6,
     "market_order_enabled": True, "stock": "BTG", "enabled": True, "taker_fee_rate": 0.001},
]).encode()

BCCBTC = MarketRules(name="BCCBTC", stock_precision=4, money_precision=6,
                     order_min_vol=Decimal("0.001"), market_order_min_money=Decimal("0.001"),
                     market_order_enabled=False, enabled=True)
BTGBTC = MarketRules(name="BTGBTC", stock_precision=4, money_precision=6,
                     order_min_vol=Decimal("0.001"), market_order_min_money=Decimal("0.01"),
                     market_order_enabled=True, enabled=True)


def place(body: bytes, content_type: str | None = None,
          rules: MarketRules = BCCBTC) -> OrderRequest:
    return validate_order(rules.name, parse_order_fields(body, content_type), rules)


def refusal(body: bytes, content_type: str | None = None,
            rules: MarketRules = BCCBTC) -> InvalidOrder:
    with pytest.raises(InvalidOrder) as caught:
        place(body, content_type, rules)
    return caught.value


# --- market rules ---------------------------------------------------------------------------


def test_market_rules_read_the_markets_list() -> None:
    assert market_rules(MARKETS_BODY) == {"BCCBTC": BCCBTC, "BTGBTC": BTGBTC}


@pytest.mark.parametrize(
    "broken",
    [
        {"stock_precision": "4"},
        {"stock_precision": True},
        {"stock_precision": -1},
        {"order_min_vol": "lots"},
        {"order_min_vol": "-0.1"},
        {"market_order_enabled": "false"},
        {"enabled": None},
        {"name": ""},
        {"name": 7},
    ],
)
def test_a_malformed_market_entry_is_skipped_and_the_others_kept(
        broken: dict[str, object]) -> None:
    entries = json.loads(MARKETS_BODY)
    entries[1].update(broken)
    assert market_rules(json.dumps([*entries, "not a market"]).encode()) == {"BCCBTC": BCCBTC}


def test_a_market_entry_missing_a_rule_is_skipped() -> None:
    entries = json.loads(MARKETS_BODY)
    del entries[0]["money_precision"]
    assert list(market_rules(json.dumps(entries).encode())) == ["BTGBTC"]


def test_minimums_sent_as_json_numbers_are_read_exactly() -> None:
    body = MARKETS_BODY.replace(b'"market_order_min_money": "0.01"',
                                b'"market_order_min_money": 0.01')
    assert market_rules(body)["BTGBTC"].market_order_min_money == Decimal("0.01")


@pytest.mark.parametrize("body", [b"", b"{}", b'{"name": "BCCBTC"}', b"not json", b"\xff", b"null"])
def test_a_body_that_is_not_a_json_list_gives_no_rules(body: bytes) -> None:
    assert market_rules(body) == {}


# --- a valid order --------------------------------------------------------------------------


def test_a_limit_order_from_a_form_body() -> None:
    order = place(b"side=1&amount=0.02&price=0.154", FORM_CONTENT_TYPE)
    assert order == OrderRequest("BCCBTC", Side.SELL, Decimal("0.02"), Decimal("0.154"))
    assert not order.is_market
    assert order.form_body() == b"side=1&amount=0.02&price=0.154"
    assert order.params() == {"side": "sell", "type": "limit", "amount": "0.02", "price": "0.154"}


def test_a_form_body_without_content_type_is_read_as_the_reference_sends_it() -> None:
    assert place(b"side=2&amount=1&price=0.1") == place(b"side=2&amount=1&price=0.1", "")


def test_form_and_json_bodies_mean_the_same_order() -> None:
    form = place(b"side=2&amount=1.50&price=0.154000", FORM_CONTENT_TYPE)
    as_json = place(b'{"price": 0.154, "side": "2", "amount": "1.5"}',
                    "application/json; charset=utf-8")
    assert form == as_json == OrderRequest("BCCBTC", Side.BUY, Decimal("1.5"), Decimal("0.154"))
    assert form.fingerprint() == as_json.fingerprint()
    assert form.form_body() == as_json.form_body() == b"side=2&amount=1.5&price=0.154"


def test_json_numbers_stay_exact() -> None:
    fields = parse_order_fields(b'{"side": 1, "amount": 0.1, "price": 0.000001}', JSON)
    assert fields == {"side": "1", "amount": "0.1", "price": "0.000001"}
    assert place(b'{"side": 1, "amount": 10, "price": 1e-1}', JSON).form_body() == (
        b"side=1&amount=10&price=0.1")


def test_a_market_order_has_no_price() -> None:
    order = place(b"side=1&amount=0.5", rules=BTGBTC)
    assert order.is_market
    assert order.price is None
    assert order.form_body() == b"side=1&amount=0.5"
    assert order.params() == {"side": "sell", "type": "market", "amount": "0.5"}


def test_numbers_are_forwarded_plain_and_stripped() -> None:
    order = place(b"side=1&amount=10.0000&price=000.500", rules=BTGBTC)
    assert order.form_body() == b"side=1&amount=10&price=0.5"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b"side=1&amount=1&price=0.1", b"side=2&amount=1&price=0.1"),
        (b"side=1&amount=1&price=0.1", b"side=1&amount=1.0001&price=0.1"),
        (b"side=1&amount=1&price=0.1", b"side=1&amount=1&price=0.100001"),
        (b"side=1&amount=1&price=0.1", b"side=1&amount=1"),
    ],
)
def test_different_orders_have_different_fingerprints(one: bytes, other: bytes) -> None:
    assert place(one, rules=BTGBTC).fingerprint() != place(other, rules=BTGBTC).fingerprint()


def test_the_same_order_on_another_market_has_another_fingerprint() -> None:
    order = place(b"side=1&amount=1&price=0.1")
    assert order.fingerprint() != replace(order, market="BTGBTC").fingerprint()


def test_an_invalid_order_is_a_bad_request() -> None:
    error = refusal(b"side=3&amount=1&price=0.1")
    assert isinstance(error, BadRequest)
    assert (error.status, error.code) == (400, "invalid_order")


# --- the body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        (b"side=1&amount=\xff", FORM_CONTENT_TYPE, "UTF-8"),
        (b'{"side": "\xff"}', JSON, "UTF-8"),
        (b"side=1&amount=%ff", FORM_CONTENT_TYPE, "UTF-8"),
        (b'["side", 1]', JSON, "JSON object"),
        (b'"side=1"', JSON, "JSON object"),
        (b"side=1&amount=1", JSON, "not valid JSON"),
        (b'{"side": 1, "amount": NaN}', JSON, "not valid JSON"),
        (b"[" * 2000, JSON, "not valid JSON"),
        (b"<order/>", "application/xml", "application/xml"),
        (b"side=1", "multipart/form-data; boundary=x", "multipart/form-data"),
        (b"side=1&amount=1&side=2", FORM_CONTENT_TYPE, "side"),
        (b'{"amount": "1", "amount": "2"}', JSON, "amount"),
        (b"side=1&amount=1&price=" + b"0" * 4096, FORM_CONTENT_TYPE, "4096"),
    ],
)
def test_an_unreadable_body_is_refused(body: bytes, content_type: str, named: str) -> None:
    with pytest.raises(InvalidOrder) as caught:
        parse_order_fields(body, content_type)
    assert caught.value.field == "body"
    assert named in caught.value.message


def test_a_body_of_exactly_the_limit_is_read() -> None:
    body = b"side=1&amount=1&price=0."
    body += b"0" * (4096 - len(body) - 1) + b"1"
    assert parse_order_fields(body, FORM_CONTENT_TYPE)["side"] == "1"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("true", "a boolean"), ("null", "null"), ('["1"]', "an array"), ('{"v": "1"}', "an object")],
)
def test_a_json_value_that_is_not_a_string_or_number_is_refused(value: str, kind: str) -> None:
    with pytest.raises(InvalidOrder) as caught:
        parse_order_fields(f'{{"side": "1", "amount": {value}}}'.encode(), JSON)
    assert caught.value.field == "amount"
    assert kind in caught.value.message


def test_a_json_number_with_a_huge_exponent_is_refused_without_expanding_it() -> None:
    with pytest.raises(InvalidOrder) as caught:
        parse_order_fields(b'{"side": "1", "amount": 1e-999999999}', JSON)
    assert caught.value.field == "amount"


# --- validation, field by field -------------------------------------------------------------


def test_an_unknown_field_is_named_with_the_accepted_ones() -> None:
    error = refusal(b"side=1&amount=1&price=0.1&type=limit")
    assert error.field == "type"
    assert "side, amount, price" in error.message


def test_unknown_fields_are_reported_before_anything_else() -> None:
    disabled = replace(BCCBTC, enabled=False)
    assert refusal(b"side=9&market=BTGBTC", rules=disabled).field == "market"
    assert "unknown field 'market'" in refusal(b"side=9&market=BTGBTC", rules=disabled).message


def test_a_disabled_market_refuses_orders() -> None:
    error = refusal(b"side=1&amount=1&price=0.1", rules=replace(BCCBTC, enabled=False))
    assert error.field == "market"
    assert "BCCBTC is disabled" in error.message


@pytest.mark.parametrize("side", [b"", b"0", b"3", b"sell", b"01", b"1.0", b"+1", b"%201"])
def test_side_must_be_1_or_2(side: bytes) -> None:
    error = refusal(b"amount=1&price=0.1&side=" + side)
    assert error.field == "side"
    assert "1 (sell) or 2 (buy)" in error.message


def test_side_is_required() -> None:
    error = refusal(b"amount=1&price=0.1")
    assert (error.field, error.message) == ("side", "side is required: 1 = sell, 2 = buy")


def test_amount_is_required() -> None:
    error = refusal(b"side=1&price=0.1")
    assert (error.field, error.message) == ("amount", "amount is required")


@pytest.mark.parametrize(
    "amount",
    [b"", b"-1", b"%2B1", b"1e-3", b"1E2", b"%201", b"1%20", b"1.2.3", b"1,5", b"nan", b"inf",
     b"Infinity", b"0x10", b".", b"1_000", b"\xd9\xa1"],  # last: ARABIC-INDIC DIGIT ONE
)
def test_amount_must_be_a_plain_decimal(amount: bytes) -> None:
    error = refusal(b"side=1&price=0.1&amount=" + amount)
    assert error.field == "amount"
    assert "plain positive decimal" in error.message


@pytest.mark.parametrize("amount", [b"0", b"0.0000", b"000"])
def test_amount_must_be_positive(amount: bytes) -> None:
    error = refusal(b"side=1&price=0.1&amount=" + amount)
    assert error.field == "amount"
    assert "positive" in error.message


@pytest.mark.parametrize("amount", [b"1.", b".5", b"007"])
def test_amount_spellings_the_engine_reads_are_accepted(amount: bytes) -> None:
    order = place(b"side=1&price=0.1&amount=" + amount)
    assert order.amount == Decimal(amount.decode())


def test_amount_at_the_stock_precision_is_accepted() -> None:
    assert place(b"side=1&amount=1.0001&price=0.1").amount == Decimal("1.0001")


def test_amount_beyond_the_stock_precision_is_refused() -> None:
    error = refusal(b"side=1&amount=1.00001&price=0.1")
    assert error.field == "amount"
    assert error.message == "amount 1.00001 has 5 decimal places; BCCBTC allows 4"


def test_trailing_zeros_do_not_count_as_decimal_places() -> None:
    order = place(b"side=1&amount=0.10000000&price=0.1000000000")
    assert order.form_body() == b"side=1&amount=0.1&price=0.1"


def test_a_market_buy_amount_is_money_but_still_has_the_stock_precision() -> None:
    assert place(b"side=2&amount=0.0123", rules=BTGBTC).amount == Decimal("0.0123")
    error = refusal(b"side=2&amount=0.01234", rules=BTGBTC)
    assert error.field == "amount"
    assert "BTGBTC allows 4" in error.message


def test_an_absurdly_long_number_is_refused() -> None:
    error = refusal(b"side=1&price=0.1&amount=1" + b"1" * 30)
    assert error.field == "amount"
    assert "31 significant digits" in error.message
    assert place(b"side=1&price=0.1&amount=1" + b"0" * 29).amount == Decimal("1e29")


@pytest.mark.parametrize(
    ("body", "rules", "minimum"),
    [
        (b"side=1&amount=0.0009&price=0.1", BCCBTC, "minimum amount on BCCBTC, 0.001"),
        (b"side=2&amount=0.0009&price=0.1", BCCBTC, "minimum amount on BCCBTC, 0.001"),
        (b"side=1&amount=0.0009", BTGBTC, "minimum amount on BTGBTC, 0.001"),
        (b"side=2&amount=0.0099", BTGBTC, "minimum spend of a market buy on BTGBTC, 0.01"),
    ],
)
def test_amount_below_the_minimum_is_refused(body: bytes, rules: MarketRules,
                                             minimum: str) -> None:
    error = refusal(body, rules=rules)
    assert error.field == "amount"
    assert minimum in error.message


@pytest.mark.parametrize(
    ("body", "rules"),
    [
        (b"side=1&amount=0.001&price=0.1", BCCBTC),
        (b"side=2&amount=0.001&price=0.1", BCCBTC),
        (b"side=1&amount=0.001", BTGBTC),  # a market sell counts stock
        (b"side=2&amount=0.01", BTGBTC),  # a market buy counts money
    ],
)
def test_amount_at_the_minimum_is_accepted(body: bytes, rules: MarketRules) -> None:
    assert place(body, rules=rules).side in (Side.SELL, Side.BUY)


def test_price_at_the_money_precision_is_accepted() -> None:
    assert place(b"side=1&amount=1&price=0.000001").price == Decimal("0.000001")


def test_price_beyond_the_money_precision_is_refused() -> None:
    error = refusal(b"side=1&amount=1&price=0.0000001")
    assert error.field == "price"
    assert error.message == "price 0.0000001 has 7 decimal places; BCCBTC allows 6"


@pytest.mark.parametrize("price", [b"", b"0", b"-0.1", b"1e-3", b"nan", b"0.1%20"])
def test_a_present_price_must_be_a_positive_plain_decimal(price: bytes) -> None:
    error = refusal(b"side=1&amount=1&price=" + price, rules=BTGBTC)
    assert error.field == "price"
    assert "price must be" in error.message


def test_a_json_null_price_is_not_a_market_order() -> None:
    with pytest.raises(InvalidOrder) as caught:
        place(b'{"side": "1", "amount": "1", "price": null}', JSON, rules=BTGBTC)
    assert caught.value.field == "price"


def test_market_orders_are_refused_where_disabled() -> None:
    error = refusal(b"side=1&amount=1")
    assert error.field == "price"
    assert error.message == "price is required: market orders are disabled on BCCBTC"


def test_fields_are_checked_in_order_side_amount_price() -> None:
    assert refusal(b"side=9&amount=x&price=y").field == "side"
    assert refusal(b"side=1&amount=x&price=y").field == "amount"
    assert refusal(b"side=1&amount=1&price=y").field == "price"


def test_a_long_bad_value_is_echoed_cut_short() -> None:
    error = refusal(b"side=1&price=0.1&amount=" + b"x" * 3000)
    assert len(error.message) < 300


# --- properties -----------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e12"), places=4)
prices = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("1e9"), places=6)


@given(side=st.sampled_from(Side), amount=amounts, price=st.none() | prices)
def test_an_order_round_trips_through_its_form_body(
        side: Side, amount: Decimal, price: Decimal | None) -> None:
    order = validate_order("BTGBTC", {"side": str(int(side)), "amount": format(amount, "f"),
                                      **({} if price is None else {"price": format(price, "f")})},
                           BTGBTC)
    again = validate_order("BTGBTC", parse_order_fields(order.form_body(), FORM_CONTENT_TYPE),
                           BTGBTC)
    assert again == order
    assert again.fingerprint() == order.fingerprint()
    assert again.form_body() == order.form_body()
    numbers = [order.params()["amount"], order.params().get("price", "1")]
    assert all(number.replace(".", "").isdigit() for number in numbers)


@given(amount=amounts, zeros=st.integers(min_value=0, max_value=8))
def test_padding_with_trailing_zeros_changes_nothing(amount: Decimal, zeros: int) -> None:
    text = format(amount, "f")
    padded = text + ("" if "." in text else ".") + "0" * zeros
    plain = place(f"side=1&price=0.1&amount={text}".encode(), rules=BTGBTC)
    as_json = place(f'{{"side": 1, "price": "0.1", "amount": {padded}}}'.encode(), JSON, BTGBTC)
    assert as_json == plain
    assert as_json.fingerprint() == plain.fingerprint()
