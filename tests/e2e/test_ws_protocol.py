"""/ws downstream protocol against the simulator: auth, limits, replace semantics, errors, queries.

Every test runs a real gateway in front of a real simulator over loopback sockets. "No push"
is proven without waiting: a second socket on the same stream sees the update, which the fan-out
offers to every client at once, then a ping on the first socket must be answered with nothing
before the pong.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import StartGateway, StartSimulator
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

PATIENCE = 5.0  # bounds each wait for a frame; it measures nothing
WITHIN = 10.0  # bounds "within seconds" waits
Socket = aiohttp.ClientWebSocketResponse
Frame = dict[str, Any]
SUCCESS = {"status": "success"}


async def start_ws_gateway(sim: RunningSimulator, start_gateway_for: StartGateway,
                           *, leeway: float | None = None, **ws: Any) -> RunningGateway:
    settings = gateway_settings(sim)
    auth = settings.auth if leeway is None else dataclasses.replace(settings.auth, leeway=leeway)
    return await start_gateway_for(sim, settings=dataclasses.replace(
        settings, auth=auth, ws=dataclasses.replace(settings.ws, **ws)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def receive(ws: Socket) -> Frame:
    frame: Frame = json.loads(await asyncio.wait_for(ws.receive_str(), PATIENCE))
    return frame


async def call(ws: Socket, method: str, params: list[Any], request_id: int = 1) -> Frame:
    """The very next frame after the request: its reply (a push first would fail the test)."""
    await ws.send_json({"method": method, "params": params, "id": request_id})
    reply = await receive(ws)
    assert reply.get("id") == request_id, reply
    return reply


async def reply_to(ws: Socket, method: str, params: list[Any], request_id: int = 1) -> Frame:
    """The reply to the request, past any pushes of earlier subscriptions still arriving."""
    await ws.send_json({"method": method, "params": params, "id": request_id})
    return (await frames_until(ws, lambda frame: frame.get("id") == request_id))[-1]


async def frames_until(ws: Socket, done: Callable[[Frame], bool]) -> list[Frame]:
    """Frames received up to and including the first one ``done`` accepts."""
    seen = [await receive(ws)]
    while not done(seen[-1]):
        seen.append(await receive(ws))
    return seen


async def pushed_before_pong(ws: Socket) -> list[Frame]:
    """What reaches ``ws`` before the reply to a ping sent now (anything offered earlier)."""
    await ws.send_json({"method": "server.ping", "params": [], "id": 999})
    return (await frames_until(ws, lambda frame: frame.get("id") == 999))[:-1]


async def closed_with(ws: Socket) -> tuple[int | None, str]:
    """Read until the server closes ``ws``; its close code and reason."""
    while True:
        message = await asyncio.wait_for(ws.receive(), WITHIN)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code, str(message.extra or "")


def depth_of(market: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("method") == "depth.update" and frame["params"][2] == market


def price_is(market: str, price: str) -> Callable[[Frame], bool]:
    return lambda frame: (frame.get("method") == "price.update"
                          and frame["params"][0] == market
                          and Decimal(frame["params"][1]) == Decimal(price))


async def trade(sim: RunningSimulator, market: str, price: str) -> None:
    await sim.place(market, 1, "1", price, account="desk-alpha")
    await sim.place(market, 2, "1", price, account="desk-beta")


async def upgrade_status(gw: RunningGateway, **options: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect(gw.url("/ws"), **options)
    return refused.value.status


async def upstream_ready(ws: Socket) -> None:
    """Until a proxied query is answered: the shared upstream connection opens in the background
    when the gateway starts, and until then queries answer code 3 (by design)."""

    async def answered() -> bool:
        return (await call(ws, "price.query", ["BCCBTC"], 500))["error"] is None

    assert await eventually(answered, WITHIN)


async def sim_answer(sim: RunningSimulator, method: str, params: list[Any]) -> Any:
    """The simulator's own answer over its own /ws (what Expie would say)."""
    async with sim.http.ws_connect(sim.ws_url()) as ws:
        return (await call(ws, method, params))["result"]


# --- authentication -----------------------------------------------------------------------


async def test_a_token_in_the_header_or_the_query_authenticates_the_upgrade(
    gw: RunningGateway
) -> None:
    for options in ({"headers": bearer(gw.token())}, {"params": {"token": gw.token()}}):
        async with gw.http.ws_connect(gw.url("/ws"), **options) as ws:
            assert (await call(ws, "depth.unsubscribe", []))["result"] == SUCCESS


async def test_server_auth_accepts_a_token_and_refuses_a_bad_one_or_another_users(
    gw: RunningGateway
) -> None:
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        bad = await call(ws, "server.auth", ["not-a-jwt"], 1)
        assert bad["error"]["code"] == 11
        assert bad["error"]["message"]  # says why
        assert (await call(ws, "server.auth", [gw.token()], 2))["result"] == SUCCESS
        other = await call(ws, "server.auth", [gw.token("desk-admin")], 3)
        assert other["error"]["code"] == 11
        assert "another user" in other["error"]["message"]
        assert (await call(ws, "depth.unsubscribe", [], 4))["result"] == SUCCESS


async def test_a_bad_token_on_the_upgrade_is_refused_not_ignored(gw: RunningGateway) -> None:
    assert await upgrade_status(gw, headers=bearer("not-a-jwt")) == 401
    assert await upgrade_status(gw, params={"token": "not-a-jwt"}) == 401


async def test_before_auth_only_ping_and_time_are_answered(gw: RunningGateway) -> None:
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        assert (await call(ws, "server.ping", [], 1))["result"] == "pong"
        assert isinstance((await call(ws, "server.time", [], 2))["result"], int)
        for request_id, (method, params) in enumerate([
            ("depth.subscribe", ["BCCBTC", 10, "0"]), ("depth.query", ["BCCBTC", 10, "0"]),
            ("depth.unsubscribe", []), ("price.subscribe", ["BCCBTC"]),
            ("price.query", ["BCCBTC"]), ("price.unsubscribe", []),
            ("deals.subscribe", ["BCCBTC"]), ("deals.query", ["BCCBTC", 10, 0]),
            ("deals.unsubscribe", []),
        ], start=3):
            reply = await call(ws, method, params, request_id)
            assert reply["error"] == {"code": 6, "message": "require authentication"}, method


async def test_an_unauthenticated_socket_is_closed_after_the_grace_period(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, auth_grace=0.3)
    async with gw.http.ws_connect(gw.url("/ws")) as authenticated:
        assert (await call(authenticated, "server.auth", [gw.token()]))["error"] is None
        async with gw.http.ws_connect(gw.url("/ws")) as anonymous:
            code, reason = await closed_with(anonymous)
            assert code == 4001
            assert "not authenticated" in reason
        assert (await call(authenticated, "server.ping", [], 2))["result"] == "pong"


async def test_a_token_that_expires_ends_the_socket(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, leeway=0, token_check_interval=0.1)
    token = gw.token(scopes=["market:read"], ttl=2)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(token)) as ws:
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"]))["error"] is None
        code, reason = await closed_with(ws)
    assert code == 4001
    assert "expired" in reason


async def test_a_token_revoked_mid_socket_ends_the_socket(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, token_check_interval=0.1)
    token, claims = gw.issuer().issue("demo-trader", ["market:read"], 900)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(token)) as ws:
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"]))["error"] is None
        status, _, _ = await gw.call("POST", "/admin/tokens/revoke", gw.token("desk-admin"),
                                     json={"jti": claims.token_id})
        assert status == 200
        code, reason = await closed_with(ws)
    assert code == 4001
    assert "revoked" in reason


async def test_a_token_without_market_read_is_refused(gw: RunningGateway) -> None:
    token = gw.token(scopes=["orders:read"])
    assert await upgrade_status(gw, headers=bearer(token)) == 403
    assert await upgrade_status(gw, params={"token": token}) == 403
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        reply = await call(ws, "server.auth", [token])
        assert reply["error"]["code"] == 11
        assert "market:read" in reply["error"]["message"]


async def test_a_market_outside_the_users_allow_list_is_refused_by_name(
    gw: RunningGateway
) -> None:
    token = gw.token("pricing-bot", ["market:read"])
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(token)) as ws:
        for request_id, (method, params) in enumerate([
            ("depth.subscribe", ["ETHBTC", 10, "0"]), ("price.subscribe", ["BCCBTC", "ETHBTC"]),
            ("deals.subscribe", ["ETHBTC"]), ("depth.query", ["ETHBTC", 10, "0"]),
            ("price.query", ["ETHBTC"]), ("deals.query", ["ETHBTC", 10, 0]),
        ], start=1):
            error = (await call(ws, method, params, request_id))["error"]
            assert error["code"] == 1, method
            assert "ETHBTC" in error["message"], method
        assert (await reply_to(ws, "price.subscribe", ["BCCBTC", "BTGBTC"], 10))["error"] is None


# --- limits -------------------------------------------------------------------------------


async def test_connections_per_user_are_limited_and_freed_on_close(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, max_connections_per_user=2)
    headers = bearer(gw.token())
    first = await gw.http.ws_connect(gw.url("/ws"), headers=headers)
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers):
        assert await upgrade_status(gw, headers=headers) == 429
        async with gw.http.ws_connect(gw.url("/ws")) as anonymous:
            refused = await call(anonymous, "server.auth", [gw.token()])
            assert refused["error"]["code"] == 11
        async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token("desk-admin"))):
            pass  # another user has slots of its own
        await first.close()

        async def admitted() -> bool:
            try:
                ws = await gw.http.ws_connect(gw.url("/ws"), headers=headers)
            except aiohttp.WSServerHandshakeError:
                return False
            await ws.close()
            return True

        assert await eventually(admitted, WITHIN)


async def test_concurrent_upgrades_do_not_share_a_connection_slot(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, max_connections_per_user=2)
    headers = bearer(gw.token())
    outcomes = await asyncio.gather(
        *(gw.http.ws_connect(gw.url("/ws"), headers=headers) for _ in range(4)),
        return_exceptions=True)
    opened = [ws for ws in outcomes if isinstance(ws, aiohttp.ClientWebSocketResponse)]
    for ws in opened:
        await ws.close()
    assert len(opened) == 2
    assert all(outcome.status == 429 for outcome in outcomes
               if isinstance(outcome, aiohttp.WSServerHandshakeError))


async def test_markets_per_connection_are_limited_across_channels(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, max_markets_per_connection=2)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 1))["error"] is None
        await receive(ws)  # its snapshot
        assert (await reply_to(ws, "price.subscribe", ["BCCBTC", "BTGBTC"], 2))["error"] is None
        third = await reply_to(ws, "deals.subscribe", ["ETHBTC"], 3)
        assert third["error"]["code"] == 1
        assert "at most 2 markets" in third["error"]["message"]
        third = await reply_to(ws, "depth.subscribe", ["ETHBTC", 10, "0"], 4)
        assert third["error"]["code"] == 1
        # Replacing a list within the limit is fine.
        assert (await reply_to(ws, "price.subscribe", ["BTGBTC"], 5))["error"] is None
        assert (await reply_to(ws, "deals.subscribe", ["BCCBTC", "BTGBTC"], 6))["error"] is None


async def test_a_burst_over_the_message_rate_gets_errors_and_the_socket_stays(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, max_messages_per_second=5)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        for request_id in range(1, 21):
            await ws.send_json({"method": "server.ping", "params": [], "id": request_id})
        replies = [await receive(ws) for _ in range(20)]
        assert sorted(reply["id"] for reply in replies) == list(range(1, 21))
        refused = [reply for reply in replies if reply["error"] is not None]
        assert refused
        assert all(reply["error"]["code"] == 3 for reply in refused)
        assert all(reply["result"] == "pong" for reply in replies if reply["error"] is None)

        async def answered() -> bool:
            return (await call(ws, "server.ping", [], 100))["result"] == "pong"

        assert await eventually(answered, WITHIN)


async def test_a_frame_over_the_size_limit_closes_with_1009(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    gw = await start_ws_gateway(sim, start_gateway_for, max_frame_bytes=1024)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        await ws.send_json({"method": "server.ping", "params": ["x" * 2048], "id": 1})
        code, _ = await closed_with(ws)
    assert code == 1009


# --- replace semantics --------------------------------------------------------------------


async def test_a_second_depth_subscribe_replaces_the_first(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    headers = bearer(gw.token())
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws, \
            gw.http.ws_connect(gw.url("/ws"), headers=headers) as watcher:
        for socket in (ws, watcher):
            assert (await call(socket, "depth.subscribe", ["BCCBTC", 10, "0"]))["error"] is None
            assert (await receive(socket))["params"][0] is True
        assert (await reply_to(ws, "depth.subscribe", ["BTGBTC", 10, "0"], 2))["error"] is None
        assert (await receive(ws))["params"] == [True, {"asks": [], "bids": []}, "BTGBTC"]
        await sim.place("BCCBTC", 1, "2", "0.3")
        await sim.place("BTGBTC", 1, "2", "0.03")
        await frames_until(watcher, depth_of("BCCBTC"))
        assert (await receive(ws))["params"] == [False, {"asks": [["0.03", "2"]]}, "BTGBTC"]
        assert not [frame for frame in await pushed_before_pong(ws) if depth_of("BCCBTC")(frame)]


async def test_the_replaced_markets_upstream_subscription_lingers_then_goes_away(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    linger = 0.5
    gw = await start_ws_gateway(sim, start_gateway_for, linger=linger)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"]))["error"] is None
        replaced = asyncio.get_running_loop().time()  # before the request: a true lower bound
        assert (await reply_to(ws, "depth.subscribe", ["BTGBTC", 10, "0"], 2))["error"] is None

        async def unsubscribed() -> bool:
            return "BCCBTC" not in (await sim.stats())["subscriptions"]["depth"]

        assert await eventually(unsubscribed, WITHIN)
        # It cannot fail by the machine being slow: the linger started after ``replaced``.
        assert asyncio.get_running_loop().time() - replaced >= linger
        assert (await sim.stats())["subscriptions"]["depth"] == {"BTGBTC": 1}


async def test_a_price_list_replaced_by_a_shorter_one_pushes_only_its_markets(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    headers = bearer(gw.token())
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws, \
            gw.http.ws_connect(gw.url("/ws"), headers=headers) as watcher:
        # Only the dedicated test below holds price and deals to their reply coming first.
        assert (await reply_to(watcher, "price.subscribe", ["BCCBTC"]))["error"] is None
        assert (await reply_to(ws, "price.subscribe", ["BCCBTC", "BTGBTC"]))["error"] is None
        assert (await reply_to(ws, "price.subscribe", ["BTGBTC"], 2))["error"] is None
        await trade(sim, "BCCBTC", "0.2")
        await trade(sim, "BTGBTC", "0.02")
        await frames_until(watcher, price_is("BCCBTC", "0.2"))
        after = await frames_until(ws, price_is("BTGBTC", "0.02"))
        after += await pushed_before_pong(ws)
        assert {frame["params"][0] for frame in after} == {"BTGBTC"}


@pytest.mark.parametrize(("method", "params"), [
    ("depth.unsubscribe", []), ("price.unsubscribe", []), ("price.subscribe", []),
    ("deals.unsubscribe", []), ("deals.subscribe", [])])
async def test_unsubscribing_stops_the_pushes(
    sim: RunningSimulator, gw: RunningGateway, method: str, params: list[Any]
) -> None:
    channel = method.partition(".")[0]
    subscribe = ["BCCBTC", 10, "0"] if channel == "depth" else ["BCCBTC"]
    headers = bearer(gw.token())
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws, \
            gw.http.ws_connect(gw.url("/ws"), headers=headers) as watcher:
        for socket in (ws, watcher):
            assert (await reply_to(socket, f"{channel}.subscribe", subscribe))["error"] is None
        assert (await reply_to(ws, method, params, 2))["result"] == SUCCESS
        if channel == "depth":
            await sim.place("BCCBTC", 1, "1", "0.2")  # rests: the book changes
        else:
            await trade(sim, "BCCBTC", "0.2")
        await frames_until(watcher, lambda frame: frame.get("method") == f"{channel}.update"
                           and _mentions(frame, "0.2"))
        late = [frame for frame in await pushed_before_pong(ws) if _mentions(frame, "0.2")]
        assert late == []


def _mentions(frame: Frame, price: str) -> bool:
    return f'"{price}' in json.dumps(frame["params"]) if frame.get("id") is None else False


@pytest.mark.parametrize("channel", [
    "depth", "price", "deals"])
async def test_the_reply_comes_before_the_first_push(
    start_simulator: StartSimulator, start_gateway_for: StartGateway, channel: str
) -> None:
    # Pushes every millisecond and trades as often: something new is always on its way.
    sim = await start_simulator(push_interval=0.001, activity=2000.0)
    gw = await start_gateway_for(sim)
    headers = bearer(gw.token())
    async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as busy:
        # Another client keeps the streams flowing while new ones subscribe; each new list
        # differs from the last, so the upstream lists change under the subscription too.
        busy_params = ["BCCBTC", 10, "0"] if channel == "depth" else ["BCCBTC"]
        assert (await call(busy, f"{channel}.subscribe", busy_params))["error"] is None
        for request_id, other in enumerate(["BTGBTC", "ETHBTC"] * 10, start=1):
            params = (["BCCBTC", 5, "0.0001" if request_id % 2 else "0"] if channel == "depth"
                      else ["BCCBTC", other])
            async with gw.http.ws_connect(gw.url("/ws"), headers=headers) as ws:
                reply = await call(ws, f"{channel}.subscribe", params, request_id)
                assert reply["result"] == SUCCESS


# --- errors where Expie is silent or closes -----------------------------------------------


async def test_an_unknown_method_gets_code_4_and_the_socket_stays(gw: RunningGateway) -> None:
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        reply = await call(ws, "order.query", ["BCCBTC", 0, 10], 7)
        assert reply == {"error": {"code": 4, "message": "method not found"}, "result": None,
                         "id": 7}
        assert (await call(ws, "server.ping", [], 8))["result"] == "pong"


@pytest.mark.parametrize("frame", [
    "not json", '{"method": "server.ping", "params": []}',
    '{"method": "server.ping", "params": {}, "id": 3}', '[1, 2]', b'{"method": "server.ping"}'],
    ids=["not-json", "no-id", "params-not-a-list", "not-an-object", "binary"])
async def test_a_malformed_frame_gets_code_1_with_a_null_id_and_the_socket_stays(
    gw: RunningGateway, frame: str | bytes
) -> None:
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        reply = await receive(ws)
        assert reply["id"] is None
        assert reply["error"]["code"] == 1
        assert reply["error"]["message"].startswith("invalid argument")
        assert (await call(ws, "server.ping", [], 8))["result"] == "pong"


# --- queries ------------------------------------------------------------------------------


async def test_server_time_is_the_current_unix_time(gw: RunningGateway) -> None:
    async with gw.http.ws_connect(gw.url("/ws")) as ws:
        result = (await call(ws, "server.time", []))["result"]
    assert isinstance(result, int)
    assert abs(result - time.time()) < 60


async def test_price_and_deals_queries_answer_what_the_exchange_says(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    await trade(sim, "BCCBTC", "0.2")
    await trade(sim, "BCCBTC", "0.21")
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        await upstream_ready(ws)
        for request_id, (method, params) in enumerate([
            ("price.query", ["BCCBTC"]), ("price.query", ["ETHBTC"]),
            ("deals.query", ["BCCBTC", 10, 0]), ("deals.query", ["BCCBTC", 1, 0]),
        ], start=1):
            reply = await call(ws, method, params, request_id)
            assert reply["result"] == await sim_answer(sim, method, params), (method, params)
    assert Decimal(reply["result"][0]["price"]) == Decimal("0.21")


async def test_depth_query_matches_the_exchanges_whether_live_or_proxied(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    for side, amount, price in [(1, "2", "0.3"), (1, "1.5", "0.305"), (1, "1", "0.41"),
                                (2, "3", "0.2"), (2, "0.5", "0.195"), (2, "1", "0.123")]:
        await sim.place("BCCBTC", side, amount, price)
    await _compare_depth_queries(sim, gw, [
        ["BCCBTC", 10, "0"], ["BCCBTC", 1, "0"], ["BCCBTC", 101, "0"], ["BCCBTC", 5, "0.01"],
        ["BCCBTC", 2, "0.1"], ["BCCBTC", 0, "0"], ["BCCBTC", 10, "0.000000001"]])


async def test_depth_query_of_a_bid_bucket_at_zero_matches_the_exchanges(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    await sim.place("BCCBTC", 2, "1", "0.0123")
    await _compare_depth_queries(sim, gw, [["BCCBTC", 10, "0.1"]])


async def _compare_depth_queries(
    sim: RunningSimulator, gw: RunningGateway, queries: list[list[Any]]
) -> None:
    """Each query, first proxied (nobody subscribed), then from the live book."""
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        await upstream_ready(ws)
        for params in queries:  # nobody subscribed: proxied
            assert (await call(ws, "depth.query", params))["result"] == await sim_answer(
                sim, "depth.query", params), params
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"]))["error"] is None
        assert (await receive(ws))["params"][0] is True  # the snapshot: the book is live
        await sim.place("BCCBTC", 1, "0.7", "0.3")
        assert (await receive(ws))["params"][0] is False
        for params in queries:
            assert (await call(ws, "depth.query", params, 2))["result"] == await sim_answer(
                sim, "depth.query", params), params


# --- upstream down ------------------------------------------------------------------------


async def test_depth_subscribe_while_the_exchange_refuses_sockets_is_a_clear_error(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    await sim.set_faults(refuse_ws=True)
    async with gw.http.ws_connect(gw.url("/ws"), headers=bearer(gw.token())) as ws:
        error = (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 1))["error"]
        assert error["code"] == 3
        assert "BCCBTC" in error["message"]
        assert (await call(ws, "server.ping", [], 2))["result"] == "pong"
        await sim.set_faults(refuse_ws=False)
        assert (await call(ws, "depth.subscribe", ["BCCBTC", 10, "0"], 3))["error"] is None
        assert (await receive(ws))["params"] == [True, {"asks": [], "bids": []}, "BCCBTC"]
