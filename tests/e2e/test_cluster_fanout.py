"""One upstream subscription per market across gateway processes sharing Redis (issue 13).

Three ``expie-gateway serve`` processes (or one with ``--workers 2``) in front of the simulator,
with clients spread over them. The simulator's stats prove what reached the exchange; each
client's book is compared, once the quiet simulator's book settles, with a reference client
subscribed to the same view directly at the simulator. Failures are real: a leader killed with
SIGKILL, a Redis server of the test's own stopped and started again, a forged message on the
relay's channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio

from tests.desk_processes import Desk, DeskFactory
from tests.e2e.test_gateway_workers import Supervised, listening
from tests.e2e.test_gateway_workers import eventually as eventually_value
from tests.e2e.test_ws_fanout import BUY, SELL, Sockets, View, Watcher
from tests.redis_server import own_redis
from tests.simulator_harness import RunningSimulator
from tests.waiting import eventually

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

MARKETS = ("BCCBTC", "BTGBTC", "ETHBTC")
LEASE_TTL, RENEW = 2.0, 0.5
CLUSTER = {"cluster": {"lease_ttl": LEASE_TTL, "renew_interval": RENEW},
           "max_connections_per_user": 400, "linger": 5}
PATIENCE = 20.0
STANDALONE = 'expie_gateway_fanout_relay_streams{role="standalone"}'
SYNCS = "expie_gateway_fanout_relay_syncs_total"


def views() -> list[View]:
    return [(market, limit, "0") for market in MARKETS for limit in (5, 10, 20)]


async def place_books(sim: RunningSimulator, shift: int = 0) -> None:
    """Six levels a side on every market; each call adds to the same levels, so every view's
    best level changes."""
    prices = {"BCCBTC": Decimal("0.1400"), "BTGBTC": Decimal("0.0100"),
              "ETHBTC": Decimal("0.0520")}
    extra = Decimal(shift) / 10
    for market, middle in prices.items():
        for step in range(6):
            offset = middle * Decimal(step + 1) / 100
            await sim.place(market, SELL, str(Decimal("1.5") + extra), str(middle + offset))
            await sim.place(market, BUY, str(Decimal("2") + extra), str(middle - offset))


async def subscriptions(sim: RunningSimulator) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = (await sim.stats())["subscriptions"]
    return counts


async def until(check: Callable[[], bool | Awaitable[bool]], within: float = PATIENCE) -> None:
    async def holds() -> bool:
        outcome = check()
        return outcome if isinstance(outcome, bool) else await outcome

    assert await eventually(holds, within)


class Cluster:
    """Gateway processes of one desk, clients on them, references at the simulator."""

    def __init__(self, desk: Desk, sim: RunningSimulator, sockets: Sockets) -> None:
        self.desk = desk
        self.sim = sim
        self.sockets = sockets
        self.ports: list[int] = []
        self.clients: dict[int, list[tuple[View, Watcher]]] = {}
        self.references: dict[View, Watcher] = {}

    async def start(self, count: int, args: tuple[str, ...] = ()) -> None:
        self.ports += await asyncio.gather(*(self.desk.start(args) for _ in range(count)))

    async def connect(self, per_port: int) -> None:
        token = self.desk.tokens["trader-a"]
        for port in self.ports:
            url = f"ws://127.0.0.1:{port}/ws"
            opened = await asyncio.gather(*(
                self._open(url, token, views()[index % len(views())])
                for index in range(per_port)))
            self.clients.setdefault(port, []).extend(opened)

    async def _open(self, url: str, token: str, view: View) -> tuple[View, Watcher]:
        ws = await self.sockets.session.ws_connect(
            url, headers={"Authorization": f"Bearer {token}"})
        watcher = Watcher(ws)
        self.sockets.opened.append(watcher)
        await watcher.subscribe(view)
        return view, watcher

    async def plain(self, port: int, user: str) -> Watcher:
        """A client of ``port`` with no subscription yet."""
        ws = await self.sockets.session.ws_connect(
            f"ws://127.0.0.1:{port}/ws",
            headers={"Authorization": f"Bearer {self.desk.tokens[user]}"})
        watcher = Watcher(ws)
        self.sockets.opened.append(watcher)
        return watcher

    async def reference(self) -> None:
        for view in views():
            self.references[view] = await self.sockets.direct(self.sim, view)

    async def change_books(self, shift: int, ports: list[int] | None = None) -> None:
        """New orders on every market; once every reference saw them, every client's book
        (of ``ports``) must come to match its reference's."""
        before = {view: watcher.book.state for view, watcher in self.references.items()}
        await place_books(self.sim, shift)
        await until(lambda: all(watcher.book.state != before[view]
                                for view, watcher in self.references.items()))
        await until(lambda: self.every_book_matches(ports))

    def every_book_matches(self, ports: list[int] | None = None) -> bool:
        return all(watcher.book.state == self.references[view].book.state
                   for port in (ports or self.ports) for view, watcher in self.clients[port])

    async def depth_subscriptions_are(self, from_gateways: int) -> bool:
        """``from_gateways`` depth subscriptions per market, besides the references' own."""
        counts = await subscriptions(self.sim)
        references = len(views()) // len(MARKETS) if self.references else 0
        return counts["depth"] == dict.fromkeys(MARKETS, from_gateways + references)

    async def one_subscription_per_market(self) -> bool:
        return await self.depth_subscriptions_are(1)

    async def standalone_everywhere(self, streams: int) -> bool:
        return all([metric(await self.metrics(port), STANDALONE) == streams
                    for port in self.ports])

    async def metrics(self, port: int) -> str:
        async with self.sockets.session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text()


async def running_cluster(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets, replicas: int,
    per_port: int, args: tuple[str, ...] = (),
) -> Cluster:
    """``replicas`` processes with ``per_port`` clients each over every view, references at the
    simulator, every book settled on the exchange's."""
    cluster = Cluster(await start_desk(ws=CLUSTER), sim, sockets)
    await cluster.start(replicas, args)
    await place_books(sim)
    await cluster.connect(per_port)
    await cluster.reference()
    await until(cluster.every_book_matches)
    return cluster


def metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and (line[len(name):][:1] in (" ", "{"))]
    return sum(values)


async def leader_pid(client: redis.asyncio.Redis, prefix: str, stream: str) -> int | None:
    value = await client.get(f"{prefix}relay:lease:{stream}")
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    holder = text.partition(":")[2]
    return int(holder.rsplit("-", 2)[-2])


async def test_three_replicas_with_300_clients_cost_one_subscription_per_market(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets,
) -> None:
    cluster = Cluster(await start_desk(ws=CLUSTER), sim, sockets)
    await cluster.start(3)
    await place_books(sim)
    await cluster.connect(per_port=100)
    tickers = [await cluster.plain(port, "trader-b") for port in cluster.ports]
    for watcher in tickers:
        for channel in ("price", "deals"):
            reply = await watcher.call(f"{channel}.subscribe", list(MARKETS))
            assert reply["error"] is None, reply
    await cluster.reference()
    await until(cluster.every_book_matches)
    assert await cluster.one_subscription_per_market()
    counts = await subscriptions(sim)
    assert counts["price"] == counts["deals"] == dict.fromkeys(MARKETS, 1)

    await cluster.change_books(shift=1)
    await sim.place("BCCBTC", BUY, "1", "0.1500")  # trades: a price and a deal for every client
    await until(cluster.every_book_matches)
    await until(lambda: all("price.update" in watcher.log and "deals.update" in watcher.log
                            for watcher in tickers))
    assert await cluster.one_subscription_per_market()
    counts = await subscriptions(sim)
    assert counts["price"] == counts["deals"] == dict.fromkeys(MARKETS, 1)
    prices = [[params for params in watcher.pushes if params[0] == "BCCBTC"
               and isinstance(params[1], str)][-1] for watcher in tickers]
    assert all(price == prices[0] for price in prices)


async def test_a_killed_leader_is_replaced_within_the_lease_and_books_stay_exact(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets, redis_url: str,
    key_prefix: str,
) -> None:
    cluster = await running_cluster(sim, start_desk, sockets, 3, per_port=12)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        pid = await leader_pid(client, key_prefix, "depth:BCCBTC")
        assert pid is not None
        port = next(port for port, process in cluster.desk.processes.items()
                    if process.pid == pid)
        survivors = [other for other in cluster.ports if other != port]
        marks = {id(watcher): len(watcher.log) for other in survivors
                 for _, watcher in cluster.clients[other]}
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        async def taken_over() -> bool:
            successor = await leader_pid(client, key_prefix, "depth:BCCBTC")
            return successor is not None and successor != pid

        await until(taken_over, within=LEASE_TTL + 5)
        took = time.monotonic() - killed
    finally:
        await client.aclose()
    assert took <= LEASE_TTL + 1.0, f"taken over after {took:.2f} s"
    await cluster.change_books(shift=2, ports=survivors)
    assert await cluster.one_subscription_per_market()
    for other in survivors:
        for view, watcher in cluster.clients[other]:
            assert not watcher.ws.closed
            if view[0] == "BCCBTC":  # its stream changed hands: a clean snapshot first
                assert "clean" in watcher.log[marks[id(watcher)]:]


async def test_a_gap_in_the_relay_resyncs_followers_to_a_clean_correct_book(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets, redis_url: str,
    key_prefix: str,
) -> None:
    cluster = await running_cluster(sim, start_desk, sockets, 2, per_port=9)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        pid = await leader_pid(client, key_prefix, "depth:ETHBTC")
        follower = next(port for port, process in cluster.desk.processes.items()
                        if process.pid != pid)
        before = metric(await cluster.metrics(follower), SYNCS)
        snapshot = await client.hgetall(f"{key_prefix}relay:snap:depth:ETHBTC")
        epoch, seq = int(snapshot[b"epoch"]), int(snapshot[b"seq"])
        marks = {id(watcher): len(watcher.log) for _, watcher in cluster.clients[follower]}
        # A message from far ahead in the leader's stream: the follower missed some.
        forged = json.dumps([epoch, seq + 50, "u", [False, {"asks": [["0.0600", "9"]]}]])
        await client.publish(f"{key_prefix}relay:depth:ETHBTC", forged)
    finally:
        await client.aclose()

    async def resynced() -> bool:
        return metric(await cluster.metrics(follower), SYNCS) > before

    await until(resynced)
    await cluster.change_books(shift=3, ports=[follower])
    for view, watcher in cluster.clients[follower]:
        if view[0] == "ETHBTC":
            assert "clean" in watcher.log[marks[id(watcher)]:]


async def test_without_redis_each_replica_subscribes_itself_then_one_again(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets, tmp_path: Path,
) -> None:
    with own_redis(tmp_path, persistent=False) as server:
        start_desk.redis_url = server.url
        cluster = await running_cluster(sim, start_desk, sockets, 3, per_port=9)
        await until(cluster.one_subscription_per_market)
        server.kill()
        await until(lambda: cluster.depth_subscriptions_are(3))
        # Three markets' depth and the ticker, each on its own, on every replica.
        await until(lambda: cluster.standalone_everywhere(len(MARKETS) + 1))
        await cluster.change_books(shift=4)
        server.start()
        await until(cluster.one_subscription_per_market)
        await cluster.change_books(shift=5)
        await until(lambda: cluster.standalone_everywhere(0))


async def test_two_workers_behind_one_port_hold_one_subscription_per_market(
    sim: RunningSimulator, start_desk: DeskFactory, sockets: Sockets, redis_url: str,
    key_prefix: str,
) -> None:
    cluster = Cluster(await start_desk(ws=CLUSTER), sim, sockets)
    await cluster.start(1, ("--workers", "2"))
    port = cluster.ports[0]
    supervisor = Supervised(cluster.desk.processes[port], port,
                            cluster.desk.config.parent / f"serve-{port}.log")
    pids: dict[int, int] = await eventually_value(
        lambda: supervisor.live_pids() if len(supervisor.live_pids()) == 2 else None,
        "two workers started")
    await eventually_value(lambda: listening(pids, port), "both workers listening")
    await place_books(sim)
    await cluster.connect(per_port=60)
    await cluster.reference()
    await until(cluster.every_book_matches)
    assert await cluster.one_subscription_per_market()
    client = redis.asyncio.Redis.from_url(redis_url)

    async def both_workers_have_clients() -> bool:  # each says so in the market's presence
        present = [await client.zcard(f"{key_prefix}relay:presence:depth:{market}")
                   for market in MARKETS]
        return 2 in present

    try:
        await until(both_workers_have_clients)
    finally:
        await client.aclose()
    # The supervisor dies: its workers, clients and relay roles and all, drain and exit.
    os.kill(supervisor.process.pid, signal.SIGKILL)
    await until(lambda: not any(Path(f"/proc/{pid}/status").exists() and
                                "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
                                for pid in pids.values()))
