"""/ws end to end: an Expie client only changes URL and token, and is served by the fan-out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import aiohttp

from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

PATIENCE = 5.0  # bounds each wait for a frame; it measures nothing


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads(await asyncio.wait_for(ws.receive_str(), PATIENCE))


async def call(ws: aiohttp.ClientWebSocketResponse, method: str, params: list[Any],
               request_id: int) -> Any:
    await ws.send_json({"method": method, "params": params, "id": request_id})
    return await receive(ws)


async def test_a_depth_subscription_is_served_from_one_upstream_book(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}"}
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws:
        reply = await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 1)
        assert reply == {"error": None, "result": {"status": "success"}, "id": 1}
        assert (await receive(ws))["params"] == [True, {"asks": [], "bids": []}, "BCCBTC"]
        await sim.place("BCCBTC", 1, "2", "0.3")
        assert (await receive(ws))["params"] == [False, {"asks": [["0.3", "2"]]}, "BCCBTC"]
        answer = await call(ws, "depth.query", ["BCCBTC", 10, "0"], 2)
        assert answer["result"] == {"asks": [["0.3", "2"]], "bids": []}
        assert (await sim.stats())["subscriptions"]["depth"] == {"BCCBTC": 1}


async def test_what_expie_ignores_or_drops_on_gets_an_error_and_the_socket_stays(
    gw: RunningGateway
) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}"}
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws:
        assert (await call(ws, "no.such", [], 4))["error"] == {
            "code": 4, "message": "method not found"}
        await ws.send_str("garbage")
        assert (await receive(ws))["error"]["code"] == 1
        assert (await call(ws, "server.ping", [], 5))["result"] == "pong"


async def test_a_socket_authenticates_with_server_auth_before_subscribing(
    gw: RunningGateway
) -> None:
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        refused = await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 1)
        assert refused["error"] == {"code": 6, "message": "require authentication"}
        assert (await call(ws, "server.auth", [gw.token()], 2))["result"] == {"status": "success"}
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 3))["error"] is None


async def test_shutdown_closes_sockets_with_1001_so_clients_reconnect_elsewhere(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gateway = await start_gateway_for(sim)
    headers = {"Authorization": f"Bearer {gateway.token()}"}
    async with gateway.http.ws_connect(gateway.url("/ws"), headers=headers) as ws:
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 1))["error"] is None
        stopping = asyncio.create_task(gateway.server.close())
        while (message := await asyncio.wait_for(ws.receive(), PATIENCE)).type is \
                aiohttp.WSMsgType.TEXT:
            pass
        await stopping
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE,
                                            aiohttp.WSCloseCode.GOING_AWAY)
    assert message.extra == "the gateway is shutting down"


async def test_followed_price_and_deals_queries_answer_as_the_exchange_does(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}"}
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws, \
            gw.http.ws_connect(sim.ws_url()) as exchange:
        assert (await call(ws, "price.subscribe", ["BCCBTC"], 1))["error"] is None
        assert (await call(ws, "deals.subscribe", ["BCCBTC"], 2))["error"] is None
        for price in ("0.2", "0.21"):  # two trades: the second price arrives as a change
            await sim.place("BCCBTC", 1, "1", price)
            await sim.place("BCCBTC", 2, "1", price, account="desk-beta")
            while (await receive(ws))["method"] != "price.update":
                pass
        for request_id, (method, params) in enumerate(
                [("price.query", ["BCCBTC"]), ("deals.query", ["BCCBTC", 2, 0]),
                 ("deals.query", ["BCCBTC", 1, 0])], start=10):
            ours = await call(ws, method, params, request_id)
            while ours.get("id") != request_id:  # pushes may come first
                ours = await receive(ws)
            theirs = await call(exchange, method, params, request_id)
            assert ours == theirs


async def test_a_price_market_nobody_follows_lingers_upstream_before_it_is_dropped(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    settings = gateway_settings(sim)
    gateway = await start_gateway_for(sim, settings=dataclasses.replace(
        settings, ws=dataclasses.replace(settings.ws, linger=1.0)))
    headers = {"Authorization": f"Bearer {gateway.token()}"}
    async with gateway.http.ws_connect(gateway.url("/ws"), headers=headers) as ws:
        assert (await call(ws, "price.subscribe", ["BCCBTC", "BTGBTC"], 1))["error"] is None
        assert (await call(ws, "price.subscribe", ["BCCBTC"], 2))["error"] is None
        # Within the linger, the upstream list still holds the market nobody follows.
        assert (await sim.stats())["subscriptions"]["price"] == {"BCCBTC": 1, "BTGBTC": 1}

        async def dropped() -> bool:
            return (await sim.stats())["subscriptions"]["price"] == {"BCCBTC": 1}

        assert await eventually(dropped, PATIENCE)
