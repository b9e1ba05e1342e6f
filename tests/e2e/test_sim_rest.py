"""The simulator's REST API against the reference: shapes, types, errors, instrumentation.

Each expected shape below is the key set and JSON types of the reference's example response.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.simulator_harness import RunningSimulator

NUMBER = (int, float)
ORDER_SHAPE = {
    "deal_fee": str, "ctime": float, "maker_fee": str, "price": str, "deal_stock": str,
    "side": int, "source": str, "amount": str, "user": int, "mtime": float, "deal_money": str,
    "left": str, "type": int, "id": int, "market": str, "taker_fee": str,
}
FINISHED_SHAPE = {
    "ctime": float, "maker_fee": str, "price": str, "deal_fee": str, "id": int, "source": str,
    "amount": str, "ftime": float, "user": int, "deal_stock": str, "deal_money": str,
    "type": int, "side": int, "market": str, "taker_fee": str,
}
DEAL_SHAPE = {
    "fee": str, "deal": str, "price": str, "amount": str, "role": int, "user": int,
    "time": float, "deal_order_id": int, "id": int,
}
MARKET_SHAPE = {
    "name": str, "market_order_min_money": str, "stock_precision": int, "money": str,
    "maker_fee_rate": NUMBER, "order_min_vol": str, "money_precision": int,
    "market_order_enabled": bool, "stock": str, "enabled": bool, "taker_fee_rate": NUMBER,
}
BALANCE_KEYS = {
    "coin_code", "available_amount", "balance", "ex_trading_amount", "ex_trading_amount_str",
    "pending_deposit_amount", "ex_available", "escrow_amount", "min_deposit",
    "pending_withdraw_amount", "pending_deposit_amount_str", "pending_withdraw_amount_str",
    "ex_freeze_str", "min_withdraw", "escrow_amount_str", "ex_available_str",
    "available_amount_str", "ex_freeze", "balance_str",
}
HISTORY_SHAPE = {
    "business": str, "detail": dict, "asset": str, "time": float, "balance": str, "change": str,
}


def assert_shape(body: dict[str, Any], shape: dict[str, Any]) -> None:
    assert set(body) == set(shape)
    for key, kind in shape.items():
        assert isinstance(body[key], kind), (key, body[key])
        assert not (kind is int and isinstance(body[key], bool)), key


async def call(sim: RunningSimulator, method: str, path: str, account: str | None = "desk-alpha",
               **kwargs: Any) -> tuple[int, Any]:
    headers = sim.auth(account) if account else {}
    async with sim.http.request(method, sim.url(path), headers=headers, **kwargs) as response:
        return response.status, await response.json()


async def cross(sim: RunningSimulator) -> tuple[dict[str, Any], dict[str, Any]]:
    """desk-beta rests a sell; desk-alpha lifts part of it and rests the rest of its buy."""
    maker = await sim.place("BTGBTC", 1, "2", "0.0158", account="desk-beta")
    taker = await sim.place("BTGBTC", 2, "3", "0.016")
    return maker, taker


async def test_markets_have_the_reference_shape(sim: RunningSimulator) -> None:
    markets = await sim.get("/v1/markets")
    assert {m["name"] for m in markets} >= {"BCCBTC", "BTGBTC"}
    assert any(m["market_order_enabled"] for m in markets)
    for market in markets:
        assert_shape(market, MARKET_SHAPE)


async def test_depth_and_ticker_have_the_reference_shape(sim: RunningSimulator) -> None:
    await sim.place("BCCBTC", 1, "1.5", "0.1363")
    await sim.place("BCCBTC", 2, "0.0069", "0.133")
    depth = await sim.get("/v1/markets/BCCBTC/depth")
    assert depth == {"asks": [["0.1363", "1.5"]], "bids": [["0.133", "0.0069"]]}
    ticker = await sim.get("/v1/markets/BCCBTC/ticker")
    assert ticker == {"high": "0", "low": "0", "last": "0", "ask": "0.1363", "bid": "0.133"}


async def test_ticker_follows_trades(sim: RunningSimulator) -> None:
    await cross(sim)
    ticker = await sim.get("/v1/markets/BTGBTC/ticker")
    assert ticker == {"high": "0.0158", "low": "0.0158", "last": "0.0158", "ask": "0",
                      "bid": "0.016"}


async def test_depth_shows_ten_levels_a_side(sim: RunningSimulator) -> None:
    for step in range(12):
        await sim.place("BCCBTC", 1, "1", f"0.2{step:02d}")
    depth = await sim.get("/v1/markets/BCCBTC/depth")
    assert [level[0] for level in depth["asks"]] == [f"0.2{s:02d}".rstrip("0") for s in range(10)]


async def test_placed_and_cancelled_orders_have_the_reference_shape(sim: RunningSimulator) -> None:
    order = await sim.place("BCCBTC", 1, "0.02", "0.154")
    assert_shape(order, ORDER_SHAPE)
    assert order["source"] == "expie.api.https"
    assert (order["side"], order["type"], order["left"], order["user"]) == (
        1, 1, "0.02", sim.user_id())
    status, cancelled = await call(
        sim, "POST", f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel")
    assert status == 200
    assert_shape(cancelled, ORDER_SHAPE)
    assert cancelled["id"] == order["id"]


async def test_pending_lists_own_orders_newest_first_with_paging(sim: RunningSimulator) -> None:
    ids = [(await sim.place("BCCBTC", 2, "1", f"0.10{i}"))["id"] for i in range(3)]
    await sim.place("BCCBTC", 2, "1", "0.1", account="desk-beta")
    page = await sim.get("/v1/markets/BCCBTC/orders/_pending", limit="2", offset="1")
    assert set(page) == {"records", "total", "limit", "offset"}
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
    assert [record["id"] for record in page["records"]] == [ids[1], ids[0]]
    for record in page["records"]:
        assert_shape(record, ORDER_SHAPE)


async def test_order_details_list_the_deals_of_an_order(sim: RunningSimulator) -> None:
    maker, taker = await cross(sim)
    details = await sim.get(f"/v1/markets/BTGBTC/orders/{taker['id']}")
    assert set(details) == {"records", "limit", "offset"}
    assert details["limit"] == 20
    [deal] = details["records"]
    assert_shape(deal, DEAL_SHAPE)
    assert (deal["role"], deal["deal_order_id"], deal["amount"], deal["price"]) == (
        2, maker["id"], "2", "0.0158")


async def test_finished_orders_have_the_reference_shape(sim: RunningSimulator) -> None:
    maker, _ = await cross(sim)
    finished = await sim.get("/v1/markets/BTGBTC/orders/_finished", account="desk-beta")
    assert set(finished) == {"records", "limit", "offset"}
    [record] = finished["records"]
    assert_shape(record, FINISHED_SHAPE)
    assert (record["id"], record["deal_stock"]) == (maker["id"], "2")


async def test_balance_summary_and_history_have_the_reference_shape(
    sim: RunningSimulator,
) -> None:
    await cross(sim)
    summary = await sim.get("/v1/balance/summary")
    for coin in summary:
        assert set(coin) == BALANCE_KEYS
        assert all(isinstance(value, str) for value in coin.values())
    btc = next(coin for coin in summary if coin["coin_code"] == "BTC")
    assert (btc["ex_freeze"], btc["ex_freeze_str"]) == ("0.016", "0.016")
    history = await sim.get("/v1/balance/history", coin_code="BTG", limit="10")
    assert set(history) == {"records", "limit", "offset"}
    assert (history["limit"], history["offset"]) == (10, 0)
    for row in history["records"]:
        assert_shape(row, HISTORY_SHAPE)
    assert [row["business"] for row in history["records"]] == ["trade", "trade", "deposit"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])
async def test_missing_or_unknown_token_is_401(sim: RunningSimulator, headers: Any) -> None:
    async with sim.http.get(sim.url("/v1/markets"), headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert await response.json() == {"code": 6, "message": "require authentication"}


@pytest.mark.parametrize(
    ("form", "status", "code", "message"),
    [
        ({"side": "3", "amount": "1", "price": "0.1"}, 400, 1, "invalid argument"),
        ({"side": "1", "amount": "abc", "price": "0.1"}, 400, 1, "invalid argument"),
        ({"side": "1", "amount": "1", "price": "-1"}, 400, 1, "invalid argument"),
        ({"amount": "1", "price": "0.1"}, 400, 1, "invalid argument"),
        ({"side": "1", "amount": "100000", "price": "0.1"}, 422, 10, "balance not enough"),
        ({"side": "1", "amount": "0.0001", "price": "0.1"}, 422, 11, "amount too small"),
        ({"side": "2", "amount": "1"}, 400, 1, "market order not enabled"),
    ],
)
async def test_bad_orders_get_the_engine_code(
    sim: RunningSimulator, form: dict[str, str], status: int, code: int, message: str
) -> None:
    assert await call(sim, "POST", "/v1/markets/BCCBTC/orders", data=form) == (
        status, {"code": code, "message": message})


async def test_market_order_on_an_empty_book_has_no_trader(sim: RunningSimulator) -> None:
    assert await call(sim, "POST", "/v1/markets/ETHBTC/orders",
                      data={"side": "2", "amount": "1"}) == (
        422, {"code": 12, "message": "no enough trader"})


async def test_cancel_errors(sim: RunningSimulator) -> None:
    theirs = await sim.place("BCCBTC", 1, "1", "0.2", account="desk-beta")
    assert await call(sim, "POST", "/v1/markets/BCCBTC/orders/999999/_cancel") == (
        404, {"code": 10, "message": "order not found"})
    assert await call(sim, "POST", f"/v1/markets/BCCBTC/orders/{theirs['id']}/_cancel") == (
        403, {"code": 11, "message": "user not match"})


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/markets/NOPE/ticker", 404, 1),
        ("GET", "/v1/markets/BCCBTC/orders/_pending?limit=500", 400, 1),
        ("GET", "/v1/markets/BCCBTC/orders/_pending?offset=-1", 400, 1),
        ("GET", "/v1/balance/history", 400, 1),
        ("GET", "/v1/balance/history?coin_code=DOGE", 400, 1),
        ("GET", "/v1/no/such/route", 404, 4),
        ("DELETE", "/v1/markets", 405, 4),
    ],
)
async def test_request_errors(
    sim: RunningSimulator, method: str, path: str, status: int, code: int
) -> None:
    got_status, body = await call(sim, method, path)
    assert (got_status, body["code"]) == (status, code)
    assert isinstance(body["message"], str)


async def test_stats_count_requests_by_route_template_and_orders(sim: RunningSimulator) -> None:
    order = await sim.place("BCCBTC", 1, "1", "0.2")
    await call(sim, "POST", f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel")
    for market in ("BCCBTC", "BTGBTC"):
        await sim.get(f"/v1/markets/{market}/ticker")
    stats = await sim.stats()
    assert set(stats) == {"ws_connections", "subscriptions", "rest_requests", "orders"}
    assert stats["rest_requests"] == {
        "POST /v1/markets/{market}/orders": 1,
        "POST /v1/markets/{market}/orders/{order_id}/_cancel": 1,
        "GET /v1/markets/{market}/ticker": 2,
    }
    assert stats["orders"] == {"placed": 1, "cancelled": 1}


async def test_control_endpoints_need_the_control_token(sim: RunningSimulator) -> None:
    for headers in ({}, sim.auth()):
        async with sim.http.get(sim.url("/_sim/stats"), headers=headers) as response:
            assert response.status == 401


async def test_injected_errors_fail_requests_until_cleared(sim: RunningSimulator) -> None:
    await sim.set_faults(error_rate=1.0, error_status=503)
    assert await call(sim, "GET", "/v1/markets") == (
        503, {"code": 3, "message": "service unavailable"})
    await sim.set_faults(clear=True)
    assert (await call(sim, "GET", "/v1/markets"))[0] == 200


async def test_partial_error_rate_fails_some_requests(sim: RunningSimulator) -> None:
    await sim.set_faults(error_rate=0.5, error_status=500)
    statuses = [(await call(sim, "GET", "/v1/markets"))[0] for _ in range(100)]
    assert 20 < statuses.count(500) < 80
    assert statuses.count(500) + statuses.count(200) == 100


async def test_injected_latency_delays_responses(sim: RunningSimulator) -> None:
    await sim.set_faults(latency_ms=300)
    started = time.monotonic()
    assert (await call(sim, "GET", "/v1/markets"))[0] == 200
    assert time.monotonic() - started >= 0.3
    assert (await sim.set_faults(latency_ms=0))["latency_ms"] == 0


async def test_bad_fault_request_names_the_field(sim: RunningSimulator) -> None:
    async with sim.http.post(sim.url("/_sim/faults"), json={"error_rate": 2},
                             headers=sim.control()) as response:
        assert response.status == 400
        assert "error_rate" in (await response.json())["message"]


async def test_deposit_credits_an_account_and_writes_history(sim: RunningSimulator) -> None:
    async with sim.http.post(sim.url("/_sim/deposit"), headers=sim.control(),
                             json={"account": "desk-gamma", "asset": "ETH", "amount": "2.5",
                                   "business_id": 4242}) as response:
        assert response.status == 200
        assert await response.json() == {"status": "success", "balance": "22.5"}
    history = await sim.get("/v1/balance/history", account="desk-gamma", coin_code="ETH")
    newest = history["records"][0]
    assert (newest["business"], newest["change"], newest["balance"]) == ("deposit", "2.5", "22.5")
    assert newest["detail"]["id"] == 4242
    async with sim.http.post(sim.url("/_sim/deposit"), headers=sim.control(),
                             json={"account": "desk-gamma", "asset": "ETH", "amount": "1",
                                   "business_id": 4242}) as response:
        assert (response.status, await response.json()) == (
            409, {"code": 10, "message": "repeat update"})
