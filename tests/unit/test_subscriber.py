"""The subscriber's delivery policy, against a fake socket whose sends wait on a gate."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Hashable

import pytest
from aiohttp import WSMsgType

from gateway.fanout.subscriber import Frame, Kind, Subscriber
from tests.waiting import eventually

VIEW = ("BCCBTC", 10, "0")


class FakeSocket:
    """Records what reached the client; while ``gate`` is clear every send hangs, as on a
    client that stopped reading."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.gate = asyncio.Event()
        if not stalled:
            self.gate.set()
        self.attempts = 0
        self.sent: list[bytes] = []
        self.opcodes: set[WSMsgType] = set()
        self.closes: list[tuple[int, bytes]] = []

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.attempts += 1
        await self.gate.wait()
        self.opcodes.add(opcode)
        self.sent.append(message)

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closes.append((code, message))
        return True


class BrokenSocket(FakeSocket):
    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        raise ConnectionResetError("Cannot write to closing transport")


class DeafSocket(FakeSocket):
    """A client that never answers the close handshake."""

    async def close(self, *, code: int, message: bytes) -> bool:
        await asyncio.Event().wait()
        return True


class CountingEvents:
    def __init__(self) -> None:
        self.slow_closed = 0
        self.conflations = 0

    def slow_consumer_closed(self) -> None:
        self.slow_closed += 1

    def depth_conflated(self) -> None:
        self.conflations += 1


class VersionedView:
    """A depth view whose whole state is a version: each diff names the version it builds on."""

    def __init__(self, key: Hashable = VIEW) -> None:
        self.key = key
        self.version = 0

    def snapshot(self) -> Frame:
        return self._frame({"clean": True, "version": self.version})

    def diff(self) -> Frame:
        self.version += 1
        return self._frame({"clean": False, "base": self.version - 1, "version": self.version})

    def resync(self, view: Hashable) -> Frame | None:
        return self.snapshot() if view == self.key else None

    def _frame(self, body: dict[str, object]) -> Frame:
        return Frame(json.dumps(body).encode(), Kind.DEPTH, self.key)


def price(n: int) -> Frame:
    return Frame(json.dumps({"method": "price.update", "n": n}).encode(), Kind.PRICE)


def deal(n: int) -> Frame:
    return Frame(json.dumps({"method": "deals.update", "n": n}).encode(), Kind.DEALS)


def replay_depth(messages: list[bytes]) -> list[tuple[bool, int]]:
    """Rebuild the book as a client would; a diff over anything but its base is a gap."""
    version: int | None = None
    seen: list[tuple[bool, int]] = []
    for raw in messages:
        message = json.loads(raw)
        if "clean" not in message:
            continue
        if not message["clean"]:
            assert version == message["base"], f"diff {message['version']} over {version}"
        version = message["version"]
        seen.append((message["clean"], message["version"]))
    return seen


async def writer_blocked(socket: FakeSocket) -> None:
    """Wait until the writer has taken a frame and hangs in the socket."""
    async def check() -> bool:
        return socket.attempts > 0
    assert await eventually(check, within=5)


async def received(socket: FakeSocket, count: int) -> None:
    async def check() -> bool:
        return len(socket.sent) >= count
    assert await eventually(check, within=5), f"{len(socket.sent)} of {count} frames arrived"


async def test_offer_never_blocks_on_a_stalled_socket() -> None:
    socket, view = FakeSocket(stalled=True), VersionedView()
    subscriber = Subscriber(socket, queue_limit=64, resync=view.resync)
    subscriber.offer(view.snapshot())
    await writer_blocked(socket)

    for _ in range(10_000):
        subscriber.offer(view.diff())

    assert socket.sent == []
    assert subscriber.queued <= 64
    assert not subscriber.closed
    await subscriber.close(1001, "test over")


async def test_a_fast_subscriber_receives_every_frame_in_order_as_text() -> None:
    socket = FakeSocket()
    subscriber = Subscriber(socket, queue_limit=512)
    frames = [price(n) if n % 3 else deal(n) for n in range(1_000)]

    for start in range(0, len(frames), 100):
        assert all(subscriber.offer(frame) for frame in frames[start:start + 100])
        await asyncio.sleep(0)

    await received(socket, len(frames))
    assert socket.sent == [frame.data for frame in frames]
    assert socket.opcodes == {WSMsgType.TEXT}
    assert subscriber.stats.sent == len(frames)
    await subscriber.close(1001, "test over")


async def test_a_lagging_subscriber_is_resynced_with_a_snapshot_never_a_gap() -> None:
    socket, view, events = FakeSocket(stalled=True), VersionedView(), CountingEvents()
    subscriber = Subscriber(socket, queue_limit=8, events=events, resync=view.resync)
    subscriber.offer(view.snapshot())
    await writer_blocked(socket)

    for _ in range(100):
        subscriber.offer(view.diff())
    socket.gate.set()
    await received(socket, 2)
    for _ in range(3):
        subscriber.offer(view.diff())
    await received(socket, 5)

    assert replay_depth(socket.sent) == [
        (True, 0), (True, 100), (False, 101), (False, 102), (False, 103)]
    assert (subscriber.stats.conflated, subscriber.stats.resyncs) == (100, 1)
    assert events.conflations == 1
    assert not subscriber.closed
    await subscriber.close(1001, "test over")


@pytest.mark.parametrize("seed", range(20))
async def test_depth_stays_gapless_under_any_interleaving_of_stalls(seed: int) -> None:
    rng = random.Random(seed)
    socket, view = FakeSocket(stalled=True), VersionedView()
    subscriber = Subscriber(socket, queue_limit=6, resync=view.resync)
    subscriber.offer(view.snapshot())
    accepted_prices: list[bytes] = []
    for n in range(400):
        if rng.random() < 0.2:
            if subscriber.offer(frame := price(n)):
                accepted_prices.append(frame.data)
        else:
            subscriber.offer(view.diff())
        if rng.random() < 0.3:
            socket.gate.set() if rng.random() < 0.5 else socket.gate.clear()
            await asyncio.sleep(0)
    socket.gate.set()

    async def settled() -> bool:
        depth = replay_depth(socket.sent)
        return subscriber.closed or (bool(depth) and depth[-1][1] == view.version)
    assert await eventually(settled, within=5)
    replay_depth(socket.sent)  # fails on a gap
    delivered_prices = [raw for raw in socket.sent if b"price.update" in raw]
    if subscriber.closed:  # too many prices piled up during a stall: the 1013 path
        assert socket.closes[0][0] == 1013
        assert delivered_prices == accepted_prices[:len(delivered_prices)]
    else:
        assert delivered_prices == accepted_prices
        await subscriber.close(1001, "test over")


async def test_price_makes_room_by_conflating_queued_depth_instead_of_closing() -> None:
    socket, view = FakeSocket(stalled=True), VersionedView()
    subscriber = Subscriber(socket, queue_limit=4, resync=view.resync)
    subscriber.offer(view.snapshot())
    await writer_blocked(socket)
    for _ in range(4):
        subscriber.offer(view.diff())

    assert subscriber.offer(price(1))
    socket.gate.set()
    await received(socket, 3)

    assert price(1).data in socket.sent
    assert replay_depth(socket.sent) == [(True, 0), (True, 4)]
    assert not subscriber.closed
    await subscriber.close(1001, "test over")


@pytest.mark.parametrize("make", [price, deal])
async def test_price_or_deals_that_do_not_fit_close_the_client_with_1013(
    make: Callable[[int], Frame],
) -> None:
    socket, events = FakeSocket(stalled=True), CountingEvents()
    subscriber = Subscriber(socket, queue_limit=4, events=events)
    subscriber.offer(make(0))
    await writer_blocked(socket)

    accepted = [subscriber.offer(make(n)) for n in range(1, 7)]
    await subscriber.wait_closed()

    assert accepted == [True, True, True, True, False, False]
    assert subscriber.closed
    assert socket.closes == [(1013, b"client too slow: 5 messages behind")]
    assert events.slow_closed == 1


async def test_a_stalled_subscriber_does_not_delay_another_sharing_its_frames() -> None:
    slow, fast = FakeSocket(stalled=True), FakeSocket()
    subscribers = [Subscriber(slow, name="slow"), Subscriber(fast, name="fast")]
    frames = [price(n) if n % 2 else deal(n) for n in range(50)]

    for frame in frames:
        for subscriber in subscribers:
            subscriber.offer(frame)
    await received(fast, len(frames))

    assert slow.sent == []
    assert all(got is frame.data for got, frame in zip(fast.sent, frames, strict=True))
    slow.gate.set()
    await received(slow, len(frames))
    assert slow.sent == fast.sent
    for subscriber in subscribers:
        await subscriber.close(1001, "test over")


async def test_close_sends_the_code_once_and_ends_the_writer() -> None:
    socket = FakeSocket(stalled=True)
    subscriber = Subscriber(socket, name="leaving")
    subscriber.offer(price(0))
    await writer_blocked(socket)

    await subscriber.close(1001, "shutting down")
    await subscriber.close(1000, "again")
    await subscriber.wait_closed()

    assert socket.closes == [(1001, b"shutting down")]
    assert subscriber.closed
    assert not subscriber.offer(price(1))
    assert not [task for task in asyncio.all_tasks()
                if task.get_name() == "fanout-writer-leaving" and not task.done()]
    socket.gate.set()
    await asyncio.sleep(0)
    assert socket.sent == []


async def test_a_client_that_ignores_the_close_handshake_does_not_hold_close_forever() -> None:
    subscriber = Subscriber(DeafSocket(), close_timeout=0.05)

    await subscriber.close(1001, "shutting down")

    assert subscriber.closed


async def test_a_lost_connection_closes_the_subscriber() -> None:
    subscriber = Subscriber(BrokenSocket())

    subscriber.offer(price(0))
    await subscriber.wait_closed()

    assert subscriber.closed
    assert not subscriber.offer(price(1))


async def test_forget_drops_what_was_queued_for_a_view() -> None:
    socket, view = FakeSocket(stalled=True), VersionedView()
    subscriber = Subscriber(socket, resync=view.resync)
    subscriber.offer(price(0))
    await writer_blocked(socket)
    subscriber.offer(view.snapshot())
    subscriber.offer(view.diff())
    subscriber.offer(price(1))

    subscriber.forget(VIEW)
    socket.gate.set()
    await received(socket, 2)

    assert socket.sent == [price(0).data, price(1).data]
    await subscriber.close(1001, "test over")


async def test_a_view_without_a_snapshot_stays_silent_instead_of_resuming_with_diffs() -> None:
    socket, view = FakeSocket(stalled=True), VersionedView()
    subscriber = Subscriber(socket, queue_limit=2)  # no resync source
    first = view.snapshot()
    subscriber.offer(first)
    await writer_blocked(socket)
    for _ in range(5):
        subscriber.offer(view.diff())
    socket.gate.set()
    await received(socket, 1)

    subscriber.offer(view.diff())
    subscriber.offer(price(1))
    await received(socket, 2)

    assert socket.sent == [first.data, price(1).data]


def test_a_depth_frame_must_name_its_view() -> None:
    with pytest.raises(ValueError, match="view"):
        Frame(b"{}", Kind.DEPTH)
    with pytest.raises(ValueError, match="view"):
        Frame(b"{}", Kind.PRICE, VIEW)
