"""The simulator's ``/ws`` over real sockets: Expie's JSON-RPC, polled depth/price/deals, faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from itertools import count
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from gateway.core.depth_book import BookSide, Level, apply_side
from simulator.app import create_app
from simulator.engine.exchange import Exchange
from tests.simulator_harness import RunningSimulator, load_test_config

SUCCESS = {"status": "success"}
WAIT = 3.0
MAX_READS = 500
SELL, BUY = 1, 2

Book = dict[str, tuple[Level, ...]]


class WsClient:
    """A test client: calls return the reply; pushes seen meanwhile are kept until asked for."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushes: list[dict[str, Any]] = []
        self._ids = count(1)

    async def send(self, method: str, *params: Any) -> int:
        request_id = next(self._ids)
        await self.ws.send_json({"method": method, "params": list(params), "id": request_id})
        return request_id

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        return await self.reply(await self.send(method, *params))

    async def reply(self, request_id: int) -> dict[str, Any]:
        for _ in range(MAX_READS):
            message = await self.read()
            if message["id"] == request_id:
                return message
            assert message["id"] is None, f"reply to another request: {message}"
            self.pushes.append(message)
        raise AssertionError(f"no reply to request {request_id}")

    async def result(self, method: str, *params: Any) -> Any:
        reply = await self.call(method, *params)
        assert reply["error"] is None, reply
        return reply["result"]

    async def error_code(self, method: str, *params: Any) -> int:
        reply = await self.call(method, *params)
        assert reply["result"] is None, reply
        return int(reply["error"]["code"])

    async def push(self, method: str) -> list[Any]:
        """The params of the oldest unclaimed ``method`` push, waiting for one if needed."""
        for _ in range(MAX_READS):
            for index, message in enumerate(self.pushes):
                if message["method"] == method:
                    return list(self.pushes.pop(index)["params"])
            self.pushes.append(await self.read())
        raise AssertionError(f"no {method} push")

    async def collect(self, seconds: float) -> None:
        """Keep every push that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        for _ in range(MAX_READS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                self.pushes.append(await self.read(remaining))
            except TimeoutError:
                return

    def unclaimed(self, method: str) -> list[list[Any]]:
        return [m["params"] for m in self.pushes if m["method"] == method]

    async def read(self, within: float = WAIT) -> dict[str, Any]:
        message = await self.ws.receive(timeout=within)
        assert message.type is WSMsgType.TEXT, message
        decoded: dict[str, Any] = json.loads(message.data)
        return decoded

    async def ends(self) -> bool:
        """True when the server ends the connection (within the wait) without sending anything."""
        message = await self.ws.receive(timeout=WAIT)
        return message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)


@asynccontextmanager
async def connect(sim: RunningSimulator, **kwargs: Any) -> AsyncIterator[WsClient]:
    async with sim.http.ws_connect(sim.ws_url(), **kwargs) as ws:
        yield WsClient(ws)


StartCustom = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def start_custom() -> AsyncIterator[StartCustom]:
    """A simulator whose ``ws`` settings are overridden by keywords."""
    running: list[RunningSimulator] = []

    async def start(**ws_settings: Any) -> RunningSimulator:
        config = load_test_config()
        config = dataclasses.replace(config, ws=dataclasses.replace(config.ws, **ws_settings))
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        running.append(RunningSimulator(server, config, aiohttp.ClientSession()))
        return running[-1]

    yield start
    for simulator in running:
        await simulator.http.close()
        await simulator.server.close()


def parse_book(body: dict[str, list[list[str]]]) -> Book:
    return {side.value: tuple((Decimal(p), Decimal(a)) for p, a in body.get(side.value, []))
            for side in BookSide}


def apply_update(book: Book, params: list[Any], limit: int) -> Book:
    clean, body, _market = params
    if clean:
        return parse_book(body)
    changes = parse_book(body)
    return {side.value: apply_side(book[side.value], list(changes[side.value]), side, limit)
            for side in BookSide}


async def trade(sim: RunningSimulator, market: str, price: str, amount: str, taker: int) -> None:
    """One deal at ``price``: desk-alpha rests, desk-beta takes from side ``taker``."""
    await sim.place(market, SELL if taker == BUY else BUY, amount, price, account="desk-alpha")
    await sim.place(market, taker, amount, price, account="desk-beta")


async def wait_for_stats(
    sim: RunningSimulator, check: Callable[[Any], bool], tries: int = 100,
) -> Any:
    stats: Any = None
    for _ in range(tries):
        stats = await sim.stats()
        if check(stats):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"stats never matched: {stats}")


# --- depth -------------------------------------------------------------------------------------

async def test_subscribe_replies_success_then_sends_a_clean_snapshot(sim: RunningSimulator) -> None:
    sim.exchange.put_limit(sim.user_id(), "BCCBTC", SELL, "1.5", "0.1351", "test")
    async with connect(sim) as client:
        assert await client.result("depth.subscribe", "BCCBTC", 10, "0") == SUCCESS
        assert await client.push("depth.update") == [
            True, {"asks": [["0.1351", "1.5"]], "bids": []}, "BCCBTC"]


async def test_a_late_subscriber_gets_the_cached_snapshot_after_its_reply(
    sim: RunningSimulator,
) -> None:
    sim.exchange.put_limit(sim.user_id(), "BCCBTC", BUY, "2", "0.134", "test")
    async with connect(sim) as first, connect(sim) as late:
        await first.result("depth.subscribe", "BCCBTC", 5, "0.01")
        snapshot = await first.push("depth.update")
        request_id = await late.send("depth.subscribe", "BCCBTC", 5, "0.01")
        assert (await late.read())["id"] == request_id
        assert await late.push("depth.update") == snapshot
        assert snapshot == [True, {"asks": [], "bids": [["0.13", "2"]]}, "BCCBTC"]


MARKET = "BCCBTC"
MID, TICK = Decimal("0.135"), Decimal("0.000025")
VIEWS = [(5, "0"), (5, "0.0001"), (10, "0.001"), (1, "0.01"), (100, "0")]


def random_changes(exchange: Exchange, users: list[int], rng: random.Random) -> None:
    """One to three placements or cancels; crossing prices make trades too."""
    for _ in range(rng.randint(1, 3)):
        user = rng.choice(users)
        resting = exchange.pending(user, MARKET)
        if resting and rng.random() < 0.35:
            exchange.cancel(user, MARKET, rng.choice(resting).id)
            continue
        side = rng.choice((SELL, BUY))
        offset = rng.randint(-30, 400) * TICK
        price = MID + offset if side == SELL else MID - offset
        if rng.random() < 0.3:
            price += Decimal(rng.randint(0, 2499)).scaleb(-8)
        amount = Decimal(rng.randint(1, 1500)).scaleb(-3)
        exchange.put_limit(user, MARKET, side, str(amount), str(price), "test")


async def test_diffs_applied_to_the_snapshot_reproduce_depth_query(sim: RunningSimulator) -> None:
    rng = random.Random(20180206)
    users = [sim.user_id("desk-alpha"), sim.user_id("desk-beta")]
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(sim)) for _ in VIEWS]
        books: list[Book] = []
        for client, (limit, interval) in zip(clients, VIEWS, strict=True):
            assert await client.result("depth.subscribe", MARKET, limit, interval) == SUCCESS
            books.append(apply_update({}, await client.push("depth.update"), limit))
        diffs = 0
        for _ in range(40):
            random_changes(sim.exchange, users, rng)
            for index, (client, (limit, interval)) in enumerate(zip(clients, VIEWS, strict=True)):
                expected = parse_book(await client.result("depth.query", MARKET, limit, interval))
                if expected != books[index]:
                    update = await client.push("depth.update")
                    diffs += update[0] is False
                    books[index] = apply_update(books[index], update, limit)
                assert books[index] == expected, (limit, interval)
        assert diffs > 0
        assert all(not client.unclaimed("depth.update") for client in clients)


async def test_a_second_depth_subscribe_replaces_the_first(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        await client.result("depth.subscribe", "BCCBTC", 10, "0")
        await client.push("depth.update")
        assert await client.result("depth.subscribe", "BTGBTC", 10, "0") == SUCCESS
        assert (await sim.stats())["subscriptions"]["depth"] == {"BTGBTC": 1}
        assert (await client.push("depth.update"))[2] == "BTGBTC"
        sim.exchange.put_limit(sim.user_id(), "BCCBTC", SELL, "1", "0.14", "test")
        sim.exchange.put_limit(sim.user_id(), "BTGBTC", SELL, "1", "0.016", "test")
        assert await client.push("depth.update") == [
            False, {"asks": [["0.016", "1"]]}, "BTGBTC"]
        assert client.unclaimed("depth.update") == []


async def test_a_subscribe_failing_the_allowed_lists_still_drops_the_old_one(
    sim: RunningSimulator,
) -> None:
    async with connect(sim) as client:
        await client.result("depth.subscribe", "BCCBTC", 10, "0")
        assert await client.error_code("depth.subscribe", "BCCBTC", "10", "0") == 1
        assert (await sim.stats())["subscriptions"]["depth"] == {"BCCBTC": 1}
        assert await client.error_code("depth.subscribe", "BCCBTC", 7, "0") == 1
        assert (await sim.stats())["subscriptions"]["depth"] == {}
        assert await client.error_code("depth.subscribe", "BCCBTC", 10, "0.5") == 1
        assert await client.result("depth.subscribe", "BCCBTC", 10, "0.10") == SUCCESS


async def test_an_unknown_market_subscription_succeeds_then_quietly_disappears(
    sim: RunningSimulator,
) -> None:
    async with connect(sim) as client:
        assert await client.result("depth.subscribe", "NOSUCH", 10, "0") == SUCCESS
        await wait_for_stats(sim, lambda stats: stats["subscriptions"]["depth"] == {})
        assert await client.result("server.ping") == "pong"
        assert client.unclaimed("depth.update") == []


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(["NOSUCH", 10, "0"], id="unknown-market"),
        pytest.param(["BCCBTC", 102, "0"], id="limit-over-101"),
        pytest.param(["BCCBTC", -1, "0"], id="negative-limit"),
        pytest.param(["BCCBTC", "10", "0"], id="string-limit"),
        pytest.param(["BCCBTC", 10, "-0.1"], id="negative-interval"),
        pytest.param(["BCCBTC", 10, "abc"], id="bad-interval"),
        pytest.param(["BCCBTC", 10, 0], id="number-interval"),
        pytest.param(["BCCBTC", 10], id="two-params"),
    ],
)
async def test_depth_query_rejects_bad_arguments_with_code_1(
    sim: RunningSimulator, params: list[Any],
) -> None:
    async with connect(sim) as client:
        assert await client.error_code("depth.query", *params) == 1


async def test_depth_query_is_not_limited_to_the_subscribe_lists(sim: RunningSimulator) -> None:
    sim.exchange.put_limit(sim.user_id(), "BCCBTC", SELL, "1", "0.13512345", "test")
    sim.exchange.put_limit(sim.user_id(), "BCCBTC", SELL, "2", "0.1357", "test")
    async with connect(sim) as client:
        assert await client.result("depth.query", "BCCBTC", 101, "0.005") == {
            "asks": [["0.14", "3"]], "bids": []}
        assert await client.result("depth.query", "BCCBTC", 0, "0") == {"asks": [], "bids": []}


# --- price -------------------------------------------------------------------------------------

async def test_price_pushes_follow_expie(sim: RunningSimulator) -> None:
    await trade(sim, "BCCBTC", "0.135", "1", BUY)
    async with connect(sim) as first, connect(sim) as second:
        assert await first.result("price.subscribe", "BCCBTC") == SUCCESS
        assert await first.push("price.update") == ["BCCBTC", "0.13500000"]
        assert await second.result("price.subscribe", "BCCBTC") == SUCCESS
        assert await second.push("price.update") == ["BCCBTC", "0.135"]
        await trade(sim, "BCCBTC", "0.1361", "1", SELL)
        for client in (first, second):
            assert await client.push("price.update") == ["BCCBTC", "0.13610000"]
        await trade(sim, "BCCBTC", "0.1361", "0.5", BUY)
        await trade(sim, "BCCBTC", "0.137", "1", BUY)
        for client in (first, second):
            assert await client.push("price.update") == ["BCCBTC", "0.13700000"]
            assert await client.result("price.query", "BCCBTC") == "0.13700000"


async def test_price_query_answers(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        assert await client.result("price.query", "ETHBTC") == "0"
        assert await client.error_code("price.query", "NOSUCH") == 1
        assert await client.error_code("price.query") == 1


async def test_price_subscribe_replaces_the_set_and_keeps_entries_before_a_bad_one(
    sim: RunningSimulator,
) -> None:
    async with connect(sim) as client:
        await client.result("price.subscribe", "BCCBTC", "ETHBTC")
        await client.result("price.subscribe", "BTGBTC")
        await trade(sim, "BCCBTC", "0.135", "1", BUY)
        await trade(sim, "BTGBTC", "0.0158", "1", BUY)
        assert await client.push("price.update") == ["BTGBTC", "0.01580000"]
        assert client.unclaimed("price.update") == []
        assert await client.error_code("price.subscribe", "BCCBTC", 5, "ETHBTC") == 1
        assert (await sim.stats())["subscriptions"]["price"] == {"BCCBTC": 1}
        assert await client.result("price.unsubscribe") == SUCCESS
        assert (await sim.stats())["subscriptions"]["price"] == {}


# --- deals -------------------------------------------------------------------------------------

async def test_deals_pushes_initial_then_incremental(sim: RunningSimulator) -> None:
    await trade(sim, "BCCBTC", "0.135", "1", BUY)
    await trade(sim, "BCCBTC", "0.1352", "0.5", SELL)
    async with connect(sim) as first, connect(sim) as second:
        assert await first.result("deals.subscribe", "BCCBTC") == SUCCESS
        market, recent = await first.push("deals.update")
        assert market == "BCCBTC"
        assert [(d["price"], d["amount"], d["type"]) for d in recent] == [
            ("0.1352", "0.5", "sell"), ("0.135", "1", "buy")]
        assert recent[0]["id"] > recent[1]["id"]
        assert await second.result("deals.subscribe", "BCCBTC") == SUCCESS
        assert await second.push("deals.update") == ["BCCBTC", recent]
        await trade(sim, "BCCBTC", "0.1353", "0.25", BUY)
        for client in (first, second):
            market, new = await client.push("deals.update")
            assert [(d["price"], d["amount"], d["type"]) for d in new] == [
                ("0.1353", "0.25", "buy")]
            assert new[0]["id"] > recent[0]["id"]
        assert await first.result("deals.query", "BCCBTC", 10, 0) == new + recent
        assert await first.result("deals.query", "BCCBTC", 1, 0) == new
        assert await first.result("deals.query", "BCCBTC", 10, recent[1]["id"]) == [
            new[0], recent[0]]


async def test_deals_subscribe_replaces_the_set(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        await client.result("deals.subscribe", "BCCBTC", "BTGBTC")
        await client.result("deals.subscribe", "BTGBTC")
        await trade(sim, "BCCBTC", "0.135", "1", BUY)
        await trade(sim, "BTGBTC", "0.0158", "1", SELL)
        market, deals = await client.push("deals.update")
        assert (market, [d["type"] for d in deals]) == ("BTGBTC", ["sell"])
        assert client.unclaimed("deals.update") == []
        assert await client.result("deals.unsubscribe") == SUCCESS


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(["BCCBTC", 0, 0], id="limit-0"),
        pytest.param(["BCCBTC", 10_001, 0], id="limit-over-10000"),
        pytest.param(["BCCBTC", 10, "0"], id="string-last-id"),
        pytest.param(["NOSUCH", 10, 0], id="unknown-market"),
    ],
)
async def test_deals_query_rejects_bad_arguments_with_code_1(
    sim: RunningSimulator, params: list[Any],
) -> None:
    async with connect(sim) as client:
        assert await client.error_code("deals.query", *params) == 1


# --- envelope, server methods, handshake --------------------------------------------------------

async def test_ping_and_time(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        assert await client.result("server.ping") == "pong"
        now = await client.result("server.time")
        assert isinstance(now, int)
        assert abs(now - time.time()) < 60


async def test_an_unknown_method_gets_no_reply(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        await client.send("order.subscribe", "BCCBTC")
        ping = await client.send("server.ping")
        assert (await client.read())["id"] == ping


async def test_an_unknown_method_gets_code_4_when_configured(start_custom: StartCustom) -> None:
    sim = await start_custom(unknown_method_error=True)
    async with connect(sim) as client:
        assert await client.error_code("order.subscribe", "BCCBTC") == 4


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("not json", id="invalid-json"),
        pytest.param('["server.ping"]', id="not-an-object"),
        pytest.param('{"method": "server.ping", "params": [], "id": "1"}', id="string-id"),
        pytest.param('{"method": 1, "params": [], "id": 1}', id="number-method"),
        pytest.param('{"method": "server.ping", "params": {}, "id": 1}', id="object-params"),
        pytest.param(b'{"method": "server.ping", "params": [], "id": 1}', id="binary-frame"),
    ],
)
async def test_a_malformed_frame_closes_the_connection_without_reply(
    sim: RunningSimulator, frame: str | bytes,
) -> None:
    async with connect(sim) as client:
        await client.result("depth.subscribe", "BCCBTC", 10, "0")
        await client.push("depth.update")
        if isinstance(frame, bytes):
            await client.ws.send_bytes(frame)
        else:
            await client.ws.send_str(frame)
        assert await client.ends()
    await wait_for_stats(sim, lambda stats: stats["ws_connections"] == 0)
    assert (await sim.stats())["subscriptions"]["depth"] == {}


async def test_an_oversized_frame_closes_the_connection(sim: RunningSimulator) -> None:
    padding = "x" * sim.config.ws.max_message_size
    async with connect(sim) as client:
        await client.ws.send_json({"method": "server.ping", "params": [padding], "id": 1})
        assert await client.ends()


async def test_a_ping_frame_gets_an_empty_pong(sim: RunningSimulator) -> None:
    async with connect(sim, autoping=False) as client:
        await client.ws.ping(b"are you there")
        message = await client.ws.receive(timeout=WAIT)
        assert (message.type, message.data) == (WSMsgType.PONG, b"")


async def test_the_chat_subprotocol_is_echoed_and_others_refused(sim: RunningSimulator) -> None:
    async with connect(sim, protocols=("other", "chat")) as client:
        assert client.ws.protocol == "chat"
    async with connect(sim) as client:
        assert client.ws.protocol is None
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sim.http.ws_connect(sim.ws_url(), protocols=("other",))
    assert refused.value.status == 400


async def test_an_idle_connection_is_dropped(start_custom: StartCustom) -> None:
    sim = await start_custom(keep_alive=0.2)
    async with connect(sim) as client:
        assert await client.result("server.ping") == "pong"
        assert await client.ends()


async def test_changes_after_full_snapshot_every_are_sent_clean(start_custom: StartCustom) -> None:
    sim = await start_custom(full_snapshot_every=0.001)
    async with connect(sim) as client:
        await client.result("depth.subscribe", "BCCBTC", 10, "0")
        await client.push("depth.update")
        sim.exchange.put_limit(sim.user_id(), "BCCBTC", BUY, "1", "0.13", "test")
        assert await client.push("depth.update") == [
            True, {"asks": [], "bids": [["0.13", "1"]]}, "BCCBTC"]


# --- stats and faults --------------------------------------------------------------------------

async def test_stats_count_connections_and_subscriptions(sim: RunningSimulator) -> None:
    async with connect(sim) as first, connect(sim) as second:
        await first.result("depth.subscribe", "BCCBTC", 10, "0")
        await second.result("depth.subscribe", "BCCBTC", 5, "0")
        await first.result("price.subscribe", "BCCBTC", "ETHBTC")
        await second.result("deals.subscribe", "BTGBTC")
        stats = await sim.stats()
        assert stats["ws_connections"] == 2
        assert stats["subscriptions"] == {
            "depth": {"BCCBTC": 2},
            "price": {"BCCBTC": 1, "ETHBTC": 1},
            "deals": {"BTGBTC": 1},
        }
    await wait_for_stats(sim, lambda stats: stats["ws_connections"] == 0)
    assert (await sim.stats())["subscriptions"] == {"depth": {}, "price": {}, "deals": {}}


async def test_refuse_ws_answers_the_handshake_with_503(sim: RunningSimulator) -> None:
    await sim.set_faults(refuse_ws=True)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await sim.http.ws_connect(sim.ws_url())
    assert refused.value.status == 503
    await sim.set_faults(refuse_ws=False)
    async with connect(sim) as client:
        assert await client.result("server.ping") == "pong"


async def test_drop_ws_closes_every_open_socket(sim: RunningSimulator) -> None:
    async with connect(sim) as first, connect(sim) as second:
        await first.result("depth.subscribe", "BCCBTC", 10, "0")
        await second.result("server.ping")
        assert (await sim.set_faults(drop_ws=True))["dropped_ws"] == 2
        assert await first.ends()
        assert await second.ends()
    stats = await sim.stats()
    assert stats["ws_connections"] == 0
    assert stats["subscriptions"]["depth"] == {}


async def test_stalled_pushes_resume_when_the_stall_ends(sim: RunningSimulator) -> None:
    async with connect(sim) as client:
        await client.result("depth.subscribe", "BCCBTC", 10, "0")
        await client.push("depth.update")
        await sim.set_faults(stall_pushes_s=30)
        sim.exchange.put_limit(sim.user_id(), "BCCBTC", SELL, "1", "0.14", "test")
        await client.collect(10 * sim.config.push_interval)
        assert client.unclaimed("depth.update") == []
        await sim.set_faults(stall_pushes_s=0)
        assert await client.push("depth.update") == [
            False, {"asks": [["0.14", "1"]]}, "BCCBTC"]


async def test_a_client_that_stops_reading_is_dropped_without_holding_up_others(
    sim: RunningSimulator,
) -> None:
    user = sim.user_id()
    for level in range(100):
        step = Decimal(level).scaleb(-4)
        sim.exchange.put_limit(user, "BCCBTC", SELL, "1", str(Decimal("0.14") + step), "test")
        sim.exchange.put_limit(user, "BCCBTC", BUY, "1", str(Decimal("0.13") - step), "test")
    requests = 8000
    async with connect(sim) as slow, connect(sim) as healthy:
        await healthy.result("depth.subscribe", "BCCBTC", 100, "0")
        await healthy.push("depth.update")
        for _ in range(requests):
            await slow.send("depth.query", "BCCBTC", 100, "0")
        sim.exchange.put_limit(user, "BCCBTC", SELL, "1", "0.1395", "test")
        assert await healthy.push("depth.update") == [
            False, {"asks": [["0.1395", "1"]]}, "BCCBTC"]
        await wait_for_stats(sim, lambda stats: stats["ws_connections"] == 1, tries=250)
        replies = 0
        for _ in range(requests):
            message = await slow.ws.receive(timeout=WAIT)
            if message.type is not WSMsgType.TEXT:
                break
            replies += 1
        assert replies < requests
