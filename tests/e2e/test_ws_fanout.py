"""The WebSocket fan-out end to end: gateway and simulator over loopback sockets (issue 6).

Clients use what they receive as an Expie client must: a clean snapshot replaces the book, a diff
is applied and each side truncated to the view's limit. The simulator's stats prove how many
depth subscriptions and connections reached the exchange.

Comparing a client's book with the simulator's ``depth.query`` only means something for one and
the same book state. With a quiet simulator the book holds still, so books are compared with
``depth.query`` once they settle. While the simulator trades, a REFERENCE client subscribes to
the same view directly at the simulator: every push poll computes each subscribed view with the
very function that answers ``depth.query``, and sends the gateway's upstream frame and the
reference's frame from the same engine state. A view can only change when the gateway's upstream
book changes (it is a function of that book), so the states a gateway client passes through must
be, in order, a run of consecutive states the reference passes through: none skipped, none
invented, none reordered. Checked while the simulator trades; the only slack is that one of the
two may have received a poll's frame before the other, which a bounded wait absorbs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import os
import socket
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from gateway.core.depth_book import BookSide, Level, apply_side
from tests.conftest import StartGateway, StartSimulator
from tests.e2e.test_upstream_resilience import metric
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

MARKET = "BCCBTC"
SELL, BUY = 1, 2
PATIENCE = 10.0  # bounds each wait; it measures nothing
TRADING = 30.0  # the "while the simulator trades for 30 s"
DEPTH_ROUTE = "GET /v1/markets/{market}/depth"
CONFLATIONS = "expie_gateway_ws_depth_conflations_total"
SLOW_CLOSED = "expie_gateway_ws_slow_consumers_closed_total"

View = tuple[str, int, str]
State = tuple[tuple[Level, ...], ...]  # (asks, bids)


def to_state(body: Any) -> State:
    return tuple(tuple((Decimal(price), Decimal(amount)) for price, amount in body[side.value])
                 for side in BookSide)


class Book:
    """A depth view as an Expie client rebuilds it, and the states it went through."""

    def __init__(self) -> None:
        self.limit = 0
        self.sides: dict[BookSide, tuple[Level, ...]] = dict.fromkeys(BookSide, ())
        self.trace: list[int] = []  # a digest of each state in order, repeats collapsed
        self.kinds: list[str] = []  # "clean" / "diff" per depth frame

    @property
    def state(self) -> State:
        return tuple(self.sides[side] for side in BookSide)

    def apply(self, clean: bool, body: dict[str, list[list[str]]]) -> None:
        self.kinds.append("clean" if clean else "diff")
        for side in BookSide:
            changes = [(Decimal(price), Decimal(amount))
                       for price, amount in body.get(side.value, [])]
            self.sides[side] = apply_side(() if clean else self.sides[side], changes, side,
                                          self.limit)
        digest = hash(self.state)
        if not self.trace or self.trace[-1] != digest:
            self.trace.append(digest)


class Watcher:
    """One WebSocket read all along: replies matched by id, depth rebuilt, arrivals logged."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.book = Book()
        self.log: list[str] = []  # "reply", "clean", "diff", "price.update", … in arrival order
        self.pushes: list[Any] = []  # the params of every other notification
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def call(self, method: str, params: list[Any]) -> Any:
        request_id = next(self._ids)
        reply = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"method": method, "params": params, "id": request_id})
        return await asyncio.wait_for(reply, PATIENCE)

    async def subscribe(self, view: View) -> None:
        self.book.limit = view[1]
        reply = await self.call("depth.subscribe", list(view))
        assert reply["error"] is None, reply

    async def query(self, view: View) -> State:
        reply = await self.call("depth.query", list(view))
        assert reply["error"] is None, reply
        return to_state(reply["result"])

    def depth_frames_since(self, mark: int) -> int:
        return sum(1 for kind in self.log[mark:] if kind in ("clean", "diff"))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is WSMsgType.TEXT:
                self._on_frame(json.loads(message.data))

    def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("id") is not None:
            self.log.append("reply")
            waiting = self._waiting.pop(frame["id"], None)
            if waiting is not None and not waiting.done():
                waiting.set_result(frame)
        elif frame["method"] == "depth.update":
            clean, body, _market = frame["params"]
            self.log.append("clean" if clean else "diff")
            self.book.apply(clean, body)
        else:
            self.log.append(frame["method"])
            self.pushes.append(frame["params"])


class Sockets:
    """Every client socket of a test, on a session without a connection limit; closed after."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.opened: list[Watcher] = []

    async def gateway(self, gw: RunningGateway, view: View | None = None,
                      token: str | None = None) -> Watcher:
        headers = {"Authorization": f"Bearer {token or gw.token()}"}
        return await self._open(gw.url("/ws"), view, headers)

    async def direct(self, sim: RunningSimulator, view: View | None = None) -> Watcher:
        return await self._open(sim.ws_url(), view, {})

    async def _open(self, url: str, view: View | None, headers: dict[str, str]) -> Watcher:
        watcher = Watcher(await self.session.ws_connect(url, headers=headers))
        self.opened.append(watcher)
        if view is not None:
            await watcher.subscribe(view)
        return watcher

    async def close(self) -> None:
        await asyncio.gather(*(watcher.close() for watcher in self.opened))


async def gateway(sim: RunningSimulator, start_gateway_for: StartGateway,
                  **ws: Any) -> RunningGateway:
    settings = gateway_settings(sim)
    settings = dataclasses.replace(settings, ws=dataclasses.replace(settings.ws, **ws))
    return await start_gateway_for(sim, settings=settings)


async def until(check: Callable[[], bool | Awaitable[bool]], within: float = PATIENCE) -> None:
    async def holds() -> bool:
        outcome = check()
        return outcome if isinstance(outcome, bool) else await outcome

    assert await eventually(holds, within)


async def depth_subscriptions(sim: RunningSimulator) -> dict[str, int]:
    counts: dict[str, int] = (await sim.stats())["subscriptions"]["depth"]
    return counts


async def place_book(sim: RunningSimulator, shift: int = 0) -> None:
    for step in range(4):
        offset = Decimal(step + shift) / 1000
        await sim.place(MARKET, SELL, "1.5", str(Decimal("0.1400") + offset))
        await sim.place(MARKET, BUY, "2", str(Decimal("0.1300") - offset))


def run_of(states: list[int], reference: list[int]) -> bool:
    """Whether ``states`` are, in order, consecutive states of ``reference``."""
    count = len(states)
    return bool(states) and any(
        reference[start:start + count] == states
        for start, state in enumerate(reference) if state == states[0])


def follows(client: Watcher, reference: Watcher) -> Callable[[], bool]:
    return lambda: run_of(client.book.trace, reference.book.trace)


def snapshotted(watcher: Watcher) -> Callable[[], bool]:
    return lambda: "clean" in watcher.log


# --- one upstream subscription, late joiners, linger -----------------------------------------

async def test_two_hundred_clients_of_a_market_cost_one_upstream_depth_subscription(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    gw = await gateway(sim, start_gateway_for, max_connections_per_user=250)
    await place_book(sim)
    view: View = (MARKET, 10, "0")
    clients = await asyncio.gather(*(sockets.gateway(gw, view) for _ in range(200)))
    await until(lambda: all(len(client.log) >= 2 for client in clients))
    expected = await (await sockets.direct(sim)).query(view)
    assert await depth_subscriptions(sim) == {MARKET: 1}
    for client in clients:
        assert client.log[:2] == ["reply", "clean"]
        assert client.book.state == expected


async def test_a_late_joiner_gets_the_book_at_once_with_no_new_upstream_subscription(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """The simulator is quiet: after the first snapshot the exchange sends nothing more, so a
    snapshot that reaches a late joiner can only come from the gateway's own book."""
    gw = await gateway(sim, start_gateway_for)
    await place_book(sim)
    querier = await sockets.direct(sim)
    first = await sockets.gateway(gw, (MARKET, 10, "0"))
    await until(snapshotted(first))
    before = await sim.stats()
    views: list[View] = [(MARKET, 10, "0"), (MARKET, 5, "0.01"), (MARKET, 20, "0.001")]
    late = [await sockets.gateway(gw, view) for view in views]
    await until(lambda: all(client.log == ["reply", "clean"] for client in late))
    after = await sim.stats()
    assert after["subscriptions"] == before["subscriptions"] == {
        "depth": {MARKET: 1}, "price": {}, "deals": {}}
    assert after["ws_connections"] == before["ws_connections"]
    for client, view in zip(late, views, strict=True):
        assert client.book.state == await querier.query(view)


async def test_the_upstream_subscription_outlives_its_last_client_by_the_linger(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    linger = 2.0
    gw = await gateway(sim, start_gateway_for, linger=linger)
    view: View = (MARKET, 10, "0")
    client = await sockets.gateway(gw, view)
    await until(snapshotted(client))
    connections = (await sim.stats())["ws_connections"]
    await client.close()
    await asyncio.sleep(linger / 4)
    assert await depth_subscriptions(sim) == {MARKET: 1}
    again = await sockets.gateway(gw, view)  # back within the linger: the same subscription
    await until(snapshotted(again))
    assert (await sim.stats())["ws_connections"] == connections
    await again.close()
    await asyncio.sleep(linger / 4)
    assert await depth_subscriptions(sim) == {MARKET: 1}

    async def unsubscribed() -> bool:
        return await depth_subscriptions(sim) == {}

    await until(unsubscribed, within=linger + PATIENCE)


async def test_a_price_subscriber_gets_its_reply_then_the_price_once_and_leaves_no_trace(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    await sim.place(MARKET, SELL, "1", "0.1412")
    await sim.place(MARKET, BUY, "1", "0.1412", account="desk-beta")
    direct = await sockets.direct(sim)  # the exchange now knows the price to push at once
    assert (await direct.call("price.subscribe", [MARKET]))["error"] is None
    await until(lambda: "price.update" in direct.log)
    gw = await gateway(sim, start_gateway_for, linger=0.3)
    client = await sockets.gateway(gw)
    assert (await client.call("price.subscribe", [MARKET]))["error"] is None
    await until(lambda: "price.update" in client.log)
    await client.call("server.ping", [])  # whatever followed the reply is in before this
    assert client.log == ["reply", "price.update", "reply"]
    assert client.pushes == [[MARKET, "0.1412"]]
    assert (await sim.stats())["subscriptions"]["price"] == {MARKET: 2}
    await client.close()

    async def unsubscribed() -> bool:  # once the linger is over
        counts: dict[str, int] = (await sim.stats())["subscriptions"]["price"]
        return counts == {MARKET: 1}  # the direct client's

    await until(unsubscribed)


async def test_depth_query_is_answered_as_the_exchange_answers_it_for_any_interval(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """ETHBTC's engine keeps 6 decimals of money and truncates a query's interval to them: an
    interval the gateway cannot be sure to truncate alike is asked of the exchange."""
    for price in ("0.052001", "0.052002", "0.052004"):
        await sim.place("ETHBTC", SELL, "1", price)
    await sim.place("ETHBTC", BUY, "1", "0.051")
    gw = await gateway(sim, start_gateway_for)
    client = await sockets.gateway(gw, ("ETHBTC", 10, "0"))
    await until(snapshotted(client))
    querier = await sockets.direct(sim)
    for interval in ("0", "0.0000015", "0.0000001", "0.00001", "0.000003", "0.1"):
        view: View = ("ETHBTC", 10, interval)
        assert await client.query(view) == await querier.query(view), interval
    await sim.place("ETHBTC", BUY, "1", "0.01")  # bids under 0.1: a bucket at zero, "0e-6"
    view = ("ETHBTC", 10, "0.1")
    await until(lambda: len(client.book.sides[BookSide.BIDS]) == 2)
    reply = await client.call("depth.query", list(view))
    assert reply["result"] == (await querier.call("depth.query", list(view)))["result"]


async def test_a_dedicated_view_with_a_bid_bucket_at_zero_reaches_its_clients(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    for step in range(120):  # a full bid side, all of it in the bucket 0 at interval 0.1
        await sim.place("BTGBTC", BUY, "0.01", str(Decimal("0.0100") + Decimal(step) / 100_000))
    await sim.place("BTGBTC", SELL, "1", "0.02")
    gw = await gateway(sim, start_gateway_for)
    view: View = ("BTGBTC", 10, "0.1")
    client = await sockets.gateway(gw, view)
    expected = await (await sockets.direct(sim)).query(view)
    await until(lambda: client.book.state == expected, within=3.0)


# --- views while trading, reconnects ----------------------------------------------------------

TRADED_VIEWS: list[View] = [(MARKET, 10, "0"), (MARKET, 5, "0.01"), (MARKET, 20, "0.001"),
                            (MARKET, 100, "0"), (MARKET, 1, "0.1")]


async def test_every_view_follows_the_exchange_exactly_while_it_trades(
    start_simulator: StartSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """Each gateway client's states are a run of its reference's states (module docstring),
    checked every second. 60 activity events a second over three markets: about 20 in BCCBTC,
    some 6 of them trades, so nearly every push poll changes the book."""
    sim = await start_simulator(activity=60.0, seed=11)
    gw = await start_gateway_for(sim)
    references = [await sockets.direct(sim, view) for view in TRADED_VIEWS]
    await until(lambda: all(len(reference.book.trace) >= 5 for reference in references))
    clients = [await sockets.gateway(gw, view) for view in TRADED_VIEWS]
    assert await depth_subscriptions(sim) == {MARKET: len(TRADED_VIEWS) + 1}
    pairs = list(zip(clients, references, strict=True))
    loop = asyncio.get_running_loop()
    end = loop.time() + TRADING
    while loop.time() < end:
        await asyncio.sleep(1.0)
        for client, reference in pairs:
            await until(follows(client, reference))
    for client, _ in pairs:
        assert client.book.kinds[0] == "clean"
        assert client.book.kinds.count("diff") > 20  # it did follow a trading book
    assert await depth_subscriptions(sim) == {MARKET: len(TRADED_VIEWS) + 1}


async def test_after_the_exchange_drops_every_client_gets_a_clean_book_again(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    gw = await gateway(sim, start_gateway_for)
    await place_book(sim)
    views: list[View] = [(MARKET, 10, "0"), (MARKET, 5, "0.01"), (MARKET, 1, "0.1")]
    clients = [await sockets.gateway(gw, view) for view in views]
    await until(lambda: all("clean" in client.log for client in clients))
    marks = [len(client.log) for client in clients]
    await sim.set_faults(refuse_ws=True, drop_ws=True)

    async def answers_unavailable() -> bool:
        reply = await clients[0].call("depth.query", list(views[0]))
        return reply["error"] is not None and reply["error"]["code"] == 3

    await until(answers_unavailable)  # no stale book while the exchange is away
    assert not any(client.ws.closed for client in clients)
    await sim.set_faults(refuse_ws=False)
    await until(lambda: all("clean" in client.log[mark:]
                            for client, mark in zip(clients, marks, strict=True)))
    await place_book(sim, shift=5)
    querier = await sockets.direct(sim)
    for client, view in zip(clients, views, strict=True):
        async def matches(client: Watcher = client, view: View = view) -> bool:
            return client.book.state == await querier.query(view)

        await until(matches)
    assert await depth_subscriptions(sim) == {MARKET: 1}


# --- a stalled client ---------------------------------------------------------------------------

class StalledClient:
    """A WebSocket client on a bare socket with the smallest receive buffer, that reads nothing
    until told to: what the gateway writes piles up in the kernel, then in the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self.book = Book()

    @classmethod
    async def open(cls, gw: RunningGateway) -> StalledClient:
        host, port = str(gw.server.host), int(gw.server.port or 0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {gw.token()}\r\n\r\n"
                     .encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, method: str, params: list[Any]) -> None:
        payload = json.dumps({"method": method, "params": params, "id": next(self._ids)}).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self._writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def receive(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        head = await self._reader.readexactly(2)
        length = head[1] & 0x7F
        if length >= 126:
            length = int.from_bytes(await self._reader.readexactly(2 if length == 126 else 8))
        return head[0] & 0x0F, await self._reader.readexactly(length)

    async def follow(self) -> None:
        """Read from now on, rebuilding the depth book, until the connection ends."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, payload = await self.receive()
                frame = json.loads(payload) if opcode == 1 else {}
                if frame.get("method") == "depth.update":
                    clean, body, _market = frame["params"]
                    self.book.apply(clean, body)
                elif opcode == 8:
                    return

    async def close_code(self) -> int | None:
        """Read to the end: the close code the gateway sent, None if the connection just ended."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, payload = await self.receive()
                if opcode == 8:
                    return int.from_bytes(payload[:2])
        return None

    def close(self) -> None:
        self._writer.close()


async def place_deep_book(sim: RunningSimulator, levels: int) -> None:
    """``levels`` asks and bids far from the traded prices: each 100-level frame is big."""
    for step in range(levels):
        offset = Decimal(step) / 10_000
        await sim.place(MARKET, SELL, "0.01", str(Decimal("0.2000") + offset))
        await sim.place(MARKET, BUY, "0.01", str(Decimal("0.0600") - offset))


async def test_a_stalled_client_is_conflated_or_closed_and_delays_nobody(
    start_simulator: StartSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """Two clients stop reading: one on depth only (conflated: it stays, states it could not
    take are skipped, and it is brought back with a fresh snapshot), one also on price (price
    is never dropped: once its queue is full of prices it is closed with 1013). Meanwhile the
    clients that read receive every state, in order. The conflated client resumes reading while
    the exchange is away, so only the snapshot after the reconnect can bring it back.

    Full snapshots on every change (``full_snapshot_every=0``) and a fast poll make each frame a
    few KB, so the stalled sockets' buffers fill within seconds; that every frame is then clean
    makes "no gap after a resync" trivial here: tests/unit/test_subscriber.py covers it."""
    sim = await start_simulator(activity=600.0, push_interval=0.005, seed=3)
    await place_deep_book(sim, 110)
    gw = await gateway(sim, start_gateway_for, queue_limit=16, full_snapshot_every=0.0)
    view: View = (MARKET, 100, "0")
    reference = await sockets.direct(sim, view)
    await until(lambda: len(reference.book.trace) >= 5)
    readers = [await sockets.gateway(gw, view) for _ in range(2)]
    for reader in readers:
        assert (await reader.call("price.subscribe", [MARKET]))["error"] is None
    depth_only, with_price = await StalledClient.open(gw), await StalledClient.open(gw)
    depth_only.book.limit = view[1]
    depth_only.send("depth.subscribe", list(view))
    with_price.send("depth.subscribe", list(view))
    with_price.send("price.subscribe", [MARKET])
    following: asyncio.Task[None] | None = None
    try:
        # Each stalled client is conflated once while its writer is stuck: two in all.
        await until(lambda: _metric_at_least(gw, CONFLATIONS, 2), within=3 * PATIENCE)
        await until(lambda: _metric_at_least(gw, SLOW_CLOSED, 1), within=PATIENCE)
        marks = [len(reader.log) for reader in readers]
        await until(lambda: all(reader.depth_frames_since(mark) >= 50
                                for reader, mark in zip(readers, marks, strict=True)))
        for reader in readers:
            await until(follows(reader, reference))
        # The close frame follows what was queued before it: reading drains it all.
        assert await with_price.close_code() == 1013
        # The conflated client catches up while the exchange is away: there is no snapshot to
        # resync it with until the exchange is back, and then it must get one.
        await sim.set_faults(refuse_ws=True, drop_ws=True)
        await until(lambda: _unavailable(readers[0], view))
        following = asyncio.create_task(depth_only.follow())
        await until(lambda: _settled(depth_only.book))
        # All it got is what was sent before it was conflated: it missed the latest states.
        assert depth_only.book.trace[-1] not in reference.book.trace[-20:]
        await sim.set_faults(refuse_ws=False)
        reference = await sockets.direct(sim, view)
        await until(lambda: _live(depth_only.book.trace[-30:], reference.book.trace))
        assert not following.done()  # conflated, not closed
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        depth_only.close()
        with_price.close()


async def _unavailable(watcher: Watcher, view: View) -> bool:
    reply = await watcher.call("depth.query", list(view))
    return reply["error"] is not None and reply["error"]["code"] == 3


async def _settled(book: Book) -> bool:
    """Whether ``book`` has received frames and no more came for half a second."""
    seen = len(book.kinds)
    await asyncio.sleep(0.5)
    return 0 < seen == len(book.kinds)


def _live(tail: list[int], reference: list[int]) -> bool:
    """Whether ``tail`` holds 30 states, all in the reference's order."""
    return len(tail) == 30 and run_of(tail, reference)


async def _metric_at_least(gw: RunningGateway, series: str, least: float) -> bool:
    return (await metric(gw, series) or 0) >= least


# --- REST from the live book, views the book cannot give ------------------------------------

async def test_rest_depth_is_served_from_the_live_book_while_a_client_subscribes(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    gw = await gateway(sim, start_gateway_for)
    await place_book(sim)
    client = await sockets.gateway(gw, (MARKET, 10, "0"))
    expected = await sim.get(f"/v1/markets/{MARKET}/depth")
    await until(lambda: client.book.state == to_state(expected))
    before = (await sim.stats())["rest_requests"].get(DEPTH_ROUTE, 0)
    status, body, headers = await gw.call("GET", f"/v1/markets/{MARKET}/depth", gw.token())
    assert (status, body, headers["X-Cache"]) == (200, expected, "HIT")
    assert (await sim.stats())["rest_requests"].get(DEPTH_ROUTE, 0) == before
    status, _, headers = await gw.call("GET", "/v1/markets/BTGBTC/depth", gw.token())
    assert (status, headers["X-Cache"]) == (200, "MISS")  # no live book there: fetched
    assert (await sim.stats())["rest_requests"].get(DEPTH_ROUTE, 0) == before + 1


async def test_a_view_the_book_cannot_give_exactly_gets_its_own_upstream_subscription(
    sim: RunningSimulator, start_gateway_for: StartGateway, sockets: Sockets,
) -> None:
    """150 asks from 0.1400 to 0.1549: the 100-level book knows them up to 0.1499 only. At
    interval 0.1 every ask falls in the bucket 0.2, whose total the book cannot know; at 0.001
    the first ten buckets (0.140 … 0.149) are complete within the book."""
    gw = await gateway(sim, start_gateway_for)
    for step in range(150):
        await sim.place(MARKET, SELL, "0.01", str(Decimal("0.1400") + Decimal(step) / 10_000))
    await sim.place(MARKET, BUY, "1", "0.13")
    exact_view: View = (MARKET, 10, "0.001")
    coarse_view: View = (MARKET, 10, "0.1")
    exact = await sockets.gateway(gw, exact_view)
    await until(snapshotted(exact))
    assert await depth_subscriptions(sim) == {MARKET: 1}
    coarse = await sockets.gateway(gw, coarse_view)

    async def subscriptions(count: int) -> bool:
        return await depth_subscriptions(sim) == {MARKET: count}

    await until(lambda: subscriptions(2))
    querier = await sockets.direct(sim)
    expected = await querier.query(coarse_view)
    assert expected == (((Decimal("0.2"), Decimal("1.5")),), ((Decimal("0.1"), Decimal("1")),))
    await until(lambda: coarse.book.state == expected)
    assert coarse.book.kinds[0] == "clean"
    assert exact.book.state == await querier.query(exact_view)
    await coarse.close()
    await until(lambda: subscriptions(1))
