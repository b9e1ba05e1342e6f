"""The access log a desk's operator reads: every order and admin call, a share of market data,
WebSocket opens and closes, each tied to its request id.

In process, over loopback sockets, with the log captured as records (what the JSON lines are
made of: ``tests/unit/test_logs.py`` checks the lines themselves).
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from gateway.settings import LoggingSettings
from tests.conftest import StartGateway
from tests.desk_processes import BUY
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

ORDERS = "/v1/markets/BCCBTC/orders"


async def gateway(sim: RunningSimulator, start_gateway_for: StartGateway,
                  access_sample: float) -> RunningGateway:
    settings = gateway_settings(sim)
    settings = dataclasses.replace(settings, logging=LoggingSettings(
        format="json", access_sample=access_sample))
    return await start_gateway_for(sim, settings=settings)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "gateway.access"]


async def test_an_order_call_has_its_access_line_with_who_what_and_how_long(
    sim: RunningSimulator, start_gateway_for: StartGateway, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await gateway(sim, start_gateway_for, access_sample=0)
    status, _, headers = await gw.call("POST", ORDERS, gw.token(), data=dict(BUY))
    assert status == 200
    refused, _, _ = await gw.call("POST", ORDERS, gw.token(), data={"side": "9"})
    placed, invalid = (vars(record) for record in access_lines(caplog))
    assert (placed["method"], placed["route"], placed["status"], placed["user"]) == (
        "POST", "/v1/markets/{market}/orders", 200, "demo-trader")
    assert placed["request_id"] == headers["X-Request-Id"]
    assert placed["duration_ms"] > 0
    assert (invalid["status"], refused) == (400, 400)


async def test_market_data_is_sampled_and_admin_calls_are_all_logged(
    sim: RunningSimulator, start_gateway_for: StartGateway, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    quiet = await gateway(sim, start_gateway_for, access_sample=0)
    for _ in range(5):
        assert (await quiet.call("GET", "/v1/markets/BCCBTC/ticker", quiet.token()))[0] == 200
    assert (await quiet.call("GET", "/admin/kill-switch", quiet.token("desk-admin")))[0] == 200
    assert [vars(record)["route"] for record in access_lines(caplog)] == ["/admin/kill-switch"]
    caplog.clear()
    every = await gateway(sim, start_gateway_for, access_sample=1)
    for _ in range(3):
        assert (await every.call("GET", "/v1/markets/BCCBTC/ticker", every.token()))[0] == 200
    assert len(access_lines(caplog)) == 3


async def test_a_websocket_logs_its_open_and_its_close_with_the_user_and_code(
    sim: RunningSimulator, start_gateway_for: StartGateway, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.web.ws")
    gw = await gateway(sim, start_gateway_for, access_sample=0)
    async with gw.http.ws_connect(gw.url("/ws"),
                                  headers={"Authorization": f"Bearer {gw.token()}"}) as ws:
        await ws.send_json({"method": "server.ping", "params": [], "id": 1})
        await ws.receive_json()

    async def closed() -> bool:
        return any(record.getMessage() == "websocket closed" for record in caplog.records)

    assert await eventually(closed, 5)
    lines = [record for record in caplog.records if record.name == "gateway.web.ws"]
    opened = next(vars(record) for record in lines if record.getMessage() == "websocket opened")
    ended = next(vars(record) for record in lines if record.getMessage() == "websocket closed")
    assert opened["user"] == ended["user"] == "demo-trader"
    assert ended["code"] == 1000
