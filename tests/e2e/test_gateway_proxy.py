"""The gateway proxies every REST path of the reference, as the caller's upstream account."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

DESK_ADMIN = "desk-admin"
READ_PATHS = [
    ("/v1/markets", "market:read"),
    ("/v1/markets/BCCBTC/depth", "market:read"),
    ("/v1/markets/BCCBTC/ticker", "market:read"),
    # A desk-wide reader sees the account's lists unchanged (others see only their own orders).
    ("/v1/markets/BCCBTC/orders/_pending", "orders:read admin"),
    ("/v1/markets/BCCBTC/orders/_finished", "orders:read admin"),
    ("/v1/markets/BCCBTC/orders/1", "orders:read admin"),
    ("/v1/balance/summary", "balance:read"),
    ("/v1/balance/history?coin_code=BTC", "balance:read"),
]


@pytest.mark.parametrize(("path", "scope"), READ_PATHS)
async def test_read_paths_answer_what_the_exchange_answers(
    sim: RunningSimulator, gw: RunningGateway, path: str, scope: str
) -> None:
    status, through_gateway, _ = await gw.call("GET", path, gw.token(DESK_ADMIN, scope.split()))
    direct = await sim.get(path.split("?", maxsplit=1)[0], **dict(
        pair.split("=") for pair in path.partition("?")[2].split("&") if pair))
    assert status == 200
    assert through_gateway == direct


async def test_orders_are_placed_and_cancelled_as_the_users_account(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = gw.token("beta-trader", ["orders:write", "orders:read"])
    status, order, _ = await gw.call("POST", "/v1/markets/BCCBTC/orders", token,
                                     data={"side": "1", "amount": "1", "price": "0.2"})
    assert status == 200
    assert order["user"] == sim.user_id("desk-beta")
    status, cancelled, _ = await gw.call(
        "POST", f"/v1/markets/BCCBTC/orders/{order['id']}/_cancel", token)
    assert (status, cancelled["id"]) == (200, order["id"])
    assert (await sim.stats())["orders"] == {"placed": 1, "cancelled": 1}


async def test_upstream_errors_pass_through_unchanged(gw: RunningGateway) -> None:
    token = gw.token(scopes=["orders:write"])
    status, body, _ = await gw.call("POST", "/v1/markets/BCCBTC/orders", token,
                                    data={"side": "1", "amount": "100000", "price": "0.2"})
    assert (status, body) == (422, {"code": 10, "message": "balance not enough"})


async def test_query_strings_reach_the_exchange(sim: RunningSimulator, gw: RunningGateway) -> None:
    token = gw.token(scopes=["orders:write", "orders:read"])
    for price in ("0.11", "0.12", "0.13"):
        await gw.call("POST", "/v1/markets/BCCBTC/orders", token,
                      data={"side": "2", "amount": "1", "price": price})
    status, page, _ = await gw.call("GET", "/v1/markets/BCCBTC/orders/_pending?limit=1&offset=1",
                                    token)
    assert (status, page["total"], page["limit"], page["offset"]) == (200, 3, 1, 1)
    assert page["records"][0]["price"] == "0.12"


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/v1/markets/BCCBTC/ticker", "market:read"),
        ("POST", "/v1/markets/BCCBTC/orders", "orders:write"),
        ("POST", "/v1/markets/BCCBTC/orders/1/_cancel", "orders:write"),
        ("GET", "/v1/markets/BCCBTC/orders/_pending", "orders:read"),
        ("GET", "/v1/balance/summary", "balance:read"),
        ("POST", "/admin/tokens/revoke", "admin"),
    ],
)
async def test_each_route_needs_its_scope(
    sim: RunningSimulator, gw: RunningGateway, method: str, path: str, needed: str
) -> None:
    others = [s for s in ("market:read", "orders:read", "orders:write", "balance:read", "admin")
              if s != needed]
    status, body, headers = await gw.call(method, path, gw.token("desk-admin", others))
    assert status == 403
    assert body["error"]["code"] == "insufficient_scope"
    assert needed in body["error"]["message"]
    assert f'scope="{needed}"' in headers["WWW-Authenticate"]
    assert (await sim.stats())["rest_requests"] == {}


async def test_scopes_the_user_lost_are_not_honoured(gw: RunningGateway) -> None:
    token = gw.token("pricing-bot", ["market:read", "balance:read"])
    status, body, _ = await gw.call("GET", "/v1/balance/summary", token)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")


async def test_markets_outside_the_allow_list_are_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = gw.token("pricing-bot", ["market:read"])
    assert (await gw.call("GET", "/v1/markets/BTGBTC/ticker", token))[0] == 200
    status, body, _ = await gw.call("GET", "/v1/markets/ETHBTC/ticker", token)
    assert (status, body["error"]["code"]) == (403, "market_not_allowed")
    assert "ETHBTC" in body["error"]["message"]
    assert (await sim.stats())["rest_requests"] == {
        "GET /v1/markets": 1, "GET /v1/markets/{market}/ticker": 1}


async def test_unknown_routes_and_methods(gw: RunningGateway) -> None:
    status, body, _ = await gw.call("GET", "/v2/nothing", gw.token())
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = await gw.call("DELETE", "/v1/markets", gw.token())
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


async def test_an_unreachable_exchange_is_a_502_naming_the_cause(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    await sim.server.close()
    status, body, headers = await gw.call("GET", "/v1/markets", gw.token())
    assert status == 502
    assert body["error"]["code"] == "upstream_unavailable"
    assert "connection" in body["error"]["message"]
    assert body["error"]["request_id"] == headers["X-Request-Id"]


async def test_a_slow_exchange_is_a_504(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    settings = gateway_settings(sim)
    settings = dataclasses.replace(settings, upstream=dataclasses.replace(
        settings.upstream, total_timeout=0.2))
    gateway = await start_gateway_for(sim, settings=settings)
    await sim.set_faults(latency_ms=1000)
    status, body, _ = await gateway.call("GET", "/v1/markets", gateway.token())
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")


async def test_request_ids_are_echoed_or_made(gw: RunningGateway) -> None:
    _, _, headers = await gw.call("GET", "/healthz", headers={"X-Request-Id": "abc-123"})
    assert headers["X-Request-Id"] == "abc-123"
    _, _, headers = await gw.call("GET", "/healthz")
    assert len(headers["X-Request-Id"]) == 32
