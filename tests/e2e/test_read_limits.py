"""Reads have their own per-user limits: market data, and order and balance reads."""

from __future__ import annotations

import dataclasses

from gateway.order_settings import RatePolicy
from tests.conftest import StartGateway
from tests.gateway_harness import gateway_settings
from tests.simulator_harness import RunningSimulator


async def test_a_reader_over_its_limit_is_refused_with_429_and_others_are_not(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    settings = gateway_settings(sim)
    limits = dataclasses.replace(settings.orders.limits, market_data=RatePolicy(2, 60.0),
                                 read=RatePolicy(1, 60.0))
    gw = await start_gateway_for(sim, settings=dataclasses.replace(
        settings, orders=dataclasses.replace(settings.orders, limits=limits)))
    token = gw.token()
    for _ in range(2):
        assert (await gw.call("GET", "/v1/markets/BCCBTC/ticker", token))[0] == 200
    status, body, headers = await gw.call("GET", "/v1/markets/BCCBTC/ticker", token)
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert "market-data limit of user demo-trader" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    # Order and balance reads count apart from market data; other users apart from this one.
    assert (await gw.call("GET", "/v1/balance/summary", token))[0] == 200
    assert (await gw.call("GET", "/v1/balance/summary", token))[0] == 429
    assert (await gw.call("GET", "/v1/markets/BCCBTC/ticker", gw.token("desk-admin")))[0] == 200
