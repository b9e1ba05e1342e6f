"""Which exchange order an order call of unknown outcome was, from the account's own lists.

What a user notices: a replay of a timed-out place gets the order it placed (never someone
else's, never one placed before it), or a definite "not placed"; a replay of a timed-out cancel
says whether the order is gone.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.core.reconcile import (
    LIMIT_TYPE,
    MARKET_TYPE,
    PlaceRequest,
    Record,
    Verdict,
    match_cancel,
    match_place,
)

INTENT_TIME = 1_000.0
WINDOW, SKEW = 15.0, 2.0
SELL = 1


def order(order_id: int, *, ctime: float = INTENT_TIME + 0.2, amount: str = "1.5",
          price: str | None = "0.02", side: int = SELL, market: str = "BCCBTC") -> Record:
    return {"id": order_id, "market": market, "side": side, "ctime": ctime,
            "type": MARKET_TYPE if price is None else LIMIT_TYPE, "amount": amount,
            "price": "0" if price is None else price}


def limit_sell() -> PlaceRequest:
    return PlaceRequest.from_params("BCCBTC", {"side": "sell", "amount": "1.5", "price": "0.02"},
                                    INTENT_TIME)


def test_an_order_with_the_same_terms_in_the_window_is_the_one_placed() -> None:
    found = match_place(limit_sell(), [order(7)], set(), window=WINDOW, skew=SKEW)
    assert (found.verdict, found.order_id) == (Verdict.PLACED, 7)


def test_equal_amounts_written_differently_still_match() -> None:
    found = match_place(limit_sell(), [order(7, amount="1.50000000", price="0.020")], set(),
                        window=WINDOW, skew=SKEW)
    assert found.order_id == 7


@pytest.mark.parametrize("other", [
    order(7, amount="1.4"), order(7, price="0.021"), order(7, side=2), order(7, market="ETHBTC"),
    order(7, price=None),
], ids=["amount", "price", "side", "market", "market-order"])
def test_an_order_with_other_terms_is_not_it(other: Record) -> None:
    found = match_place(limit_sell(), [other], set(), window=WINDOW, skew=SKEW)
    assert (found.verdict, found.order_id) == (Verdict.NOT_PLACED, None)


@pytest.mark.parametrize("ctime", [INTENT_TIME - SKEW - 0.1, INTENT_TIME + WINDOW + SKEW + 0.1],
                         ids=["before-the-intent", "after-the-window"])
def test_an_order_created_outside_the_window_is_not_it(ctime: float) -> None:
    found = match_place(limit_sell(), [order(7, ctime=ctime)], set(), window=WINDOW, skew=SKEW)
    assert found.verdict is Verdict.NOT_PLACED


def test_an_exchange_clock_a_little_behind_ours_is_allowed_for() -> None:
    found = match_place(limit_sell(), [order(7, ctime=INTENT_TIME - SKEW + 0.1)], set(),
                        window=WINDOW, skew=SKEW)
    assert found.order_id == 7


def test_an_order_already_attributed_to_another_call_is_left_to_it() -> None:
    records = [order(7, ctime=INTENT_TIME + 0.1), order(8, ctime=INTENT_TIME + 0.3)]
    found = match_place(limit_sell(), records, {7}, window=WINDOW, skew=SKEW)
    assert found.order_id == 8
    assert match_place(limit_sell(), records, {7, 8}, window=WINDOW,
                       skew=SKEW).verdict is Verdict.NOT_PLACED


def test_of_several_fitting_orders_the_first_created_is_taken() -> None:
    records = [order(9, ctime=INTENT_TIME + 3), order(8, ctime=INTENT_TIME + 1)]
    assert match_place(limit_sell(), records, set(), window=WINDOW, skew=SKEW).order_id == 8


def test_a_market_order_is_matched_on_its_amount_whatever_it_traded_at() -> None:
    request = PlaceRequest.from_params("BCCBTC", {"side": "buy", "amount": "0.1"}, INTENT_TIME)
    found = match_place(request, [order(5, side=2, amount="0.1", price=None)], set(),
                        window=WINDOW, skew=SKEW)
    assert (found.verdict, found.order_id) == (Verdict.PLACED, 5)


@pytest.mark.parametrize("params", [{"side": "up", "amount": "1"}, {"side": "buy"},
                                    {"side": "buy", "amount": "x"}])
def test_an_intent_that_no_order_call_writes_is_refused(params: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="an intent with"):
        PlaceRequest.from_params("BCCBTC", params, INTENT_TIME)


def test_a_parsed_intent_keeps_decimals() -> None:
    assert (limit_sell().amount, limit_sell().price) == (Decimal("1.5"), Decimal("0.02"))


def test_a_cancel_whose_order_is_still_pending_did_not_take_effect() -> None:
    found = match_cancel(7, [order(7)], [], traded=False)
    assert found.verdict is Verdict.NOT_CANCELLED


def test_a_cancel_whose_order_finished_took_effect_and_answers_with_its_final_state() -> None:
    final = {**order(7), "ftime": INTENT_TIME + 1, "deal_stock": "0.5"}
    found = match_cancel(7, [order(8)], [order(9), final], traded=True)
    assert (found.verdict, found.record) == (Verdict.CANCELLED, final)


def test_a_cancel_of_an_untraded_order_gone_from_the_book_took_effect() -> None:
    found = match_cancel(7, [], [], traded=False)  # Expie keeps no history of it
    assert (found.verdict, found.record) == (Verdict.CANCELLED, None)


def test_a_traded_order_in_neither_list_is_not_decided_yet() -> None:
    assert match_cancel(7, [], [order(6)], traded=True).verdict is Verdict.UNDECIDED
