"""Parameters of the public WebSocket methods: what the exchange accepts, and each refusal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.core.jsonrpc import JsonValue
from gateway.core.rpc_params import (
    DealsQuery,
    DepthCall,
    InvalidParams,
    MarketCall,
    MarketsCall,
    NoParams,
    parse_call,
)


def test_a_depth_subscription_keeps_the_clients_interval_text() -> None:
    assert parse_call("depth.subscribe", ["BCCBTC", 10, "0.10"]) == DepthCall(
        "BCCBTC", 10, Decimal("0.1"), "0.10")


@pytest.mark.parametrize(("params", "problem"), [
    (["BCCBTC", 10], "expected 3 params"),
    (["BCCBTC", 7, "0"], "limit must be one of"),
    (["BCCBTC", 10, "0.5"], "interval must be one of"),
    (["BCCBTC", 10, 0], "interval must be a non-empty string"),
    (["BCCBTC", True, "0"], "limit must be an integer"),
    (["A" * 16, 10, "0"], "market must be under 16 bytes"),
    (["BCCBTC", 10, " 0"], "interval must be a non-negative decimal"),
])
def test_a_bad_depth_subscription_is_refused_with_code_1(
    params: list[JsonValue], problem: str
) -> None:
    with pytest.raises(InvalidParams) as caught:
        parse_call("depth.subscribe", params)
    assert caught.value.code == 1
    assert problem in caught.value.message


def test_a_depth_query_takes_any_limit_up_to_101_and_any_interval() -> None:
    assert parse_call("depth.query", ["BCCBTC", 0, "0.5"]) == DepthCall(
        "BCCBTC", 0, Decimal("0.5"), "0.5")
    with pytest.raises(InvalidParams):
        parse_call("depth.query", ["BCCBTC", 102, "0"])
    with pytest.raises(InvalidParams):
        parse_call("depth.query", ["BCCBTC", 5, "-1"])


def test_price_and_deals_subscriptions_take_a_list_that_may_be_empty() -> None:
    assert parse_call("price.subscribe", ["BCCBTC", "BTGBTC"]) == MarketsCall(("BCCBTC", "BTGBTC"))
    assert parse_call("deals.subscribe", []) == MarketsCall(())
    with pytest.raises(InvalidParams):
        parse_call("deals.subscribe", ["BCCBTC", 3])


def test_queries_of_price_and_deals() -> None:
    assert parse_call("price.query", ["BCCBTC"]) == MarketCall("BCCBTC")
    assert parse_call("deals.query", ["BCCBTC", 10, 0]) == DealsQuery("BCCBTC", 10, 0)
    with pytest.raises(InvalidParams):
        parse_call("deals.query", ["BCCBTC", 0, 0])
    with pytest.raises(InvalidParams):
        parse_call("deals.query", ["BCCBTC", 10, "0"])


def test_methods_whose_params_expie_ignores() -> None:
    assert parse_call("depth.unsubscribe", [1, "x"]) == NoParams()
    assert parse_call("server.ping", []) == NoParams()
