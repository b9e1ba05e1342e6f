"""Cluster fan-out: what relaying one upstream subscription through Redis costs, and what it buys.

Every gateway here shares a ``redis-server`` of this run's own (``bench.common.RedisServer``: a
free loopback port, no persistence, stopped by its PID), with ``ws.cluster.enabled`` and its
default lease. Per market one process holds the lease (``{prefix}relay:lease:depth:BCCBTC`` =
``{token}:{host}-{pid}-{hex}``), subscribes upstream and publishes every change; the others
follow through pub/sub. The simulator, the driver, the tap and the client processes are
``bench.ws_fanout``'s (read its docstring): the driver makes one unique ask total per period,
the tap stamps the upstream receipt of each frame, and delivery latency = client receipt - tap
receipt of the frame with the same ask total (``CLOCK_MONOTONIC``, shared by every process).
Gateways log at WARNING to files of the run's directory, summarised under ``gateway_logs``.

Measured in one run, because this 2-core machine is noisy and only ratios and differences
within a run mean something:

1. Relay cost: two ``expie-gateway serve`` processes with the same ``redis.key_prefix``. One
   client on gateway A comes first, and the lease must then name A's pid: A leads, B follows.
   Half of the client processes connect to A, the other half to B (default 500 and 500 clients,
   one push per 50 ms), so both groups are measured in the same windows (``--rounds`` of them).
   Relay cost = follower - leader, p50 and p99, over every window's deliveries together. A
   subscriber of the relay's Redis channel (a thread of this process) stamps when each message
   came out of Redis, which splits the follower's latency into the leader's part and its own.
   Each window also reads the simulator's depth subscriptions of the market (minus the tap's:
   the gateways must hold exactly one) and the lease's holder.
2. Idle memory per connection on the follower: B's RSS before its first client and with
   ``--idle-clients`` idle subscribed connections, / N (``bench.ws_fanout``'s ``idle_rss``).
3. Workers scaling: one ``serve --workers 2`` (a supervisor; its two workers share the port
   with ``SO_REUSEPORT`` and lead / follow each other through Redis) against one ``serve``, each
   alone, on the same client counts, each swept to shorter periods until its first point not
   sustained (``bench.ws_fanout``'s sweep: p99 < 250 ms, >= 99 % delivered, pushes at >= 90 %
   of their rate). The ratio is of the most deliveries/s sustained. Every point reports the CPU
   of each process (each worker, the supervisor, the simulator, Redis, the clients), so a reader
   sees what ran out: the load generator shares the two cores.
4. Redis CPU per delivery and per relayed message, in every window: the redis-server's CPU
   seconds in the window (``/proc``) / the deliveries, and / the messages published (Redis's own
   count of ``PUBLISH`` calls, next to the number of frames the tap saw). That CPU includes the
   cluster's upkeep (leases, presence, the gateways' revocation and state checks), so before the
   windows of each deployment Redis's CPU is also read with the clients connected and no pushes
   (its ``INFO cpu``, finer than ``/proc``'s ticks), and the cost per message is given again
   above that upkeep. The busiest commands of each window are listed.

Every count and duration is an option with an environment variable (``--help``); with the
defaults a run takes about 3 minutes. Prints one JSON object and writes
``bench/results/relay.json``. Run from the repository root: ``python -m bench.relay``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    HOST,
    REPO,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    BenchError,
    RedisServer,
    Server,
    clean_environment,
    env_number,
    free_port,
    gateway_command,
    load_average,
    raise_fd_limit,
    redis_server_pid,
    run_benchmark,
    running,
    socket_inodes,
    tcp_inodes,
)
from bench.ws_fanout import (
    ASK_TOTAL,
    CLIENT_VIEW,
    FANOUT_COUNTERS,
    GRACE,
    MARKET,
    SWEEP_P99_MS,
    TAP_VIEW,
    TARGET_RSS_KB,
    Window,
    Worker,
    ask_all,
    canonical,
    drive_window,
    driver_to_tap,
    fanout_config,
    gateway_counters,
    idle_footprint,
    latency_stats,
    market_reader,
    most_sustained,
    open_on,
    parse_sweep,
    simulator_running,
    summarize,
    sweep_periods,
    watch,
    workers,
)

NAME = "relay"
STREAM = f"depth:{MARKET}"
PAIR_PREFIX = "bench-relay-pair:"
# Fine steps where a 2-core machine runs out of CPU (40,000 to 60,000 deliveries/s in all).
DEFAULT_SWEEP = "2000:0.067,0.05,0.044,0.04,0.033,0.025"
TARGET_ADDED_P50_MS = 5.0
TARGET_ADDED_P99_MS = 20.0
TARGET_WORKERS_RATIO = 1.6
RELAY_SYNCS = "expie_gateway_fanout_relay_syncs_total"
REDIS_CPU, REDIS_CALLS = "redis:cpu_us", "redis:calls:"  # counters of a window
UPKEEP_SECONDS = 4.0  # Redis's CPU measured with no pushes, before the windows
TOP_COMMANDS = 5
CHANNEL_READ = 0.25  # seconds a channel tap's read waits, so that it stops soon
START_WITHIN = 30.0  # seconds for a supervisor's workers to listen, and for a lease to appear
LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+) (.*)$")
LOG_SAMPLES = 8
CODE = ("gateway", "simulator")  # the code under test, for the run's record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=env_number("BENCH_DURATION", 8, 1, 60),
                        help="seconds measured per window, 1..60 (env BENCH_DURATION)")
    parser.add_argument("--warmup", type=float, default=env_number("BENCH_WARMUP", 2, 1, 10),
                        help="seconds at a window's period before it is measured "
                             "(env BENCH_WARMUP)")
    parser.add_argument("--leader-clients", type=int,
                        default=int(env_number("BENCH_RELAY_LEADER_CLIENTS", 500, 1, 9000)),
                        help="relay cost: clients of the leader (env BENCH_RELAY_LEADER_CLIENTS)")
    parser.add_argument("--follower-clients", type=int,
                        default=int(env_number("BENCH_RELAY_FOLLOWER_CLIENTS", 500, 1, 9000)),
                        help="relay cost: clients of the follower "
                             "(env BENCH_RELAY_FOLLOWER_CLIENTS)")
    parser.add_argument("--period", type=float,
                        default=env_number("BENCH_RELAY_PERIOD", 0.05, 0.01, 1),
                        help="relay cost: seconds between pushes (env BENCH_RELAY_PERIOD)")
    parser.add_argument("--rounds", type=int,
                        default=int(env_number("BENCH_RELAY_ROUNDS", 2, 1, 5)),
                        help="relay cost: measured windows, 1..5 (env BENCH_RELAY_ROUNDS)")
    parser.add_argument("--idle-clients", type=int,
                        default=int(env_number("BENCH_RELAY_IDLE_CLIENTS", 5000, 1, 19000)),
                        help="idle connections on the follower for its RSS "
                             "(env BENCH_RELAY_IDLE_CLIENTS)")
    parser.add_argument("--sweep", default=os.environ.get("BENCH_RELAY_SWEEP", DEFAULT_SWEEP),
                        help="workers scaling points, as bench.ws_fanout's --sweep (a group "
                             "without 'CLIENTS:' uses leader + follower clients; env "
                             "BENCH_RELAY_SWEEP)")
    parser.add_argument("--processes", type=int,
                        default=int(env_number("BENCH_WS_PROCESSES", 4, 2, 16)),
                        help="client processes; for the relay cost the first half connects to "
                             "the leader, the rest to the follower (env BENCH_WS_PROCESSES)")
    parser.add_argument("--push-interval", type=float, default=0.01,
                        help="the simulator's poll period (it pushes only what changed)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed or a window had other than one "
                             "upstream depth subscription")
    args = parser.parse_args(argv)
    args.sweep = parse_sweep(args.sweep, args.leader_clients + args.follower_clients)
    if not args.sweep:
        parser.error("--sweep: at least one point")
    return args


# --- the deployment: what every part shares, and gateways ------------------------------------


@dataclass
class Rig:
    """The run's Redis, simulator and load processes; gateways come and go in front of them."""

    directory: Path
    redis_url: str
    redis_pid: int
    store: redis.Redis
    simulator: Server
    sim_port: int
    bearer: dict[str, str]
    clients: list[Worker]
    tap: Worker
    driver: Worker

    def pids(self) -> dict[str, int]:
        """The processes every window watches besides the gateways, by name."""
        return {"simulator": self.simulator.process.pid, "redis": self.redis_pid,
                "tap": self.tap.pid, "driver": self.driver.pid,
                **{worker.name: worker.pid for worker in self.clients}}


@dataclass(frozen=True)
class Gateway:
    name: str
    server: Server
    port: int
    prefix: str
    serving: tuple[int, ...]  # the pids that hold connections: the process, or its workers

    @property
    def supervised(self) -> bool:
        return self.serving != (self.server.process.pid,)

    def pids(self) -> dict[str, int]:
        """The processes to watch, by name: a supervisor's CPU is not its workers'."""
        if not self.supervised:
            return {self.name: self.server.process.pid}
        return {f"{self.name}_supervisor": self.server.process.pid,
                **{f"{self.name}_worker_{n}": pid for n, pid in enumerate(self.serving, 1)}}


@contextlib.contextmanager
def rig(args: argparse.Namespace, directory: Path) -> Iterator[Rig]:
    sim_port = free_port()
    bearer = market_reader(fanout_config(directory, free_port(), sim_port, name="issuer"))
    own = RedisServer(directory, persistent=False)
    with contextlib.ExitStack() as stack:
        stack.callback(own.stop)
        own.start()
        redis_pid = redis_server_pid(own.url)
        if redis_pid is None:
            raise BenchError(f"cannot read the CPU of the redis-server at {own.url}")
        store = stack.enter_context(redis.Redis.from_url(own.url, socket_timeout=5))
        simulator = stack.enter_context(simulator_running(sim_port, args.push_interval))
        clients, tap, driver = stack.enter_context(workers(args, sim_port))
        tapped = tap.ask("open", sim_port, {}, 1, TAP_VIEW)
        if tapped["opened"] != 1:
            raise BenchError(f"the tap could not subscribe: {tapped['errors']}")
        yield Rig(directory, own.url, redis_pid, store, simulator, sim_port, bearer, clients,
                  tap, driver)


@contextlib.contextmanager
def gateway(setup: Rig, name: str, prefix: str, processes: int = 1) -> Iterator[Gateway]:
    """``expie-gateway serve`` (``--workers`` above 1) on Redis with ``prefix``, no drain delay
    (it only slows the run down); its log linked into the run's directory, since ``running``
    deletes its own name for it."""
    port = free_port()
    config = fanout_config(setup.directory, port, setup.sim_port, name=name, extra={
        "server": {"host": HOST, "port": port, "drain_delay": 0, "shutdown_timeout": 2},
        "redis": {"url": setup.redis_url, "key_prefix": prefix, "require_persistence": False},
        "ws": {"cluster": {"enabled": True}}})
    command = [*gateway_command(config), *(["--workers", str(processes)] if processes > 1 else [])]
    with running(name, command, f"http://{HOST}:{port}/healthz", {},
                 env=clean_environment()) as (server, _):
        os.link(server.log, setup.directory / f"{name}.log")
        serving = (server.process.pid,) if processes == 1 else listening_workers(
            server, port, processes)
        yield Gateway(name, server, port, prefix, serving)


def listening_workers(server: Server, port: int, count: int) -> tuple[int, ...]:
    """The pids of the supervisor's ``count`` workers, once each holds a listening socket of
    ``port`` (the supervisor's /healthz answers as soon as the first one does)."""
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        pids = children(server.process.pid)
        sockets = tcp_inodes(port, TCP_LISTEN)
        if len(pids) == count and all(socket_inodes(pid) & sockets for pid in pids):
            return tuple(sorted(pids))
        if server.process.poll() is not None:
            break
        time.sleep(0.1)
    raise BenchError(f"{server.name}: {count} workers did not listen on {port}: "
                     f"{server.log.read_text(errors='replace')[-2000:]}")


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux ``/proc``; none once it exited)."""
    with contextlib.suppress(OSError):
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def connections_per_process(gw: Gateway) -> dict[str, int]:
    """Established connections of the gateway's port held by each serving process: how the
    kernel spread them over the workers."""
    sockets = tcp_inodes(gw.port, TCP_ESTABLISHED)
    names = {pid: name for name, pid in gw.pids().items()}
    return {names[pid]: len(socket_inodes(pid) & sockets) for pid in gw.serving}


def lease_pid(setup: Rig, prefix: str) -> int | None:
    """The pid in the holder of the market's depth lease (``{token}:{host}-{pid}-{hex}``)."""
    value = setup.store.get(f"{prefix}relay:lease:{STREAM}")
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    holder = text.partition(":")[2]
    return int(holder.rsplit("-", 2)[1])


def leader_after_first_client(setup: Rig, gw: Gateway, fleet: Worker) -> int:
    """Open one client of the market on ``gw`` and wait for the lease: the pid holding it."""
    open_on([fleet], gw.port, setup.bearer, 1, gw.name)
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if (pid := lease_pid(setup, gw.prefix)) is not None:
            return pid
        time.sleep(0.05)
    raise BenchError(f"{gw.name}: no lease of {STREAM} within {START_WITHIN} s of its first client")


def holder_name(setup: Rig, gateways: Sequence[Gateway]) -> str | None:
    """Which watched process holds the depth lease now (None when nobody does)."""
    pid = lease_pid(setup, gateways[0].prefix)
    return None if pid is None else process_name(gateways, pid)


def process_name(gateways: Sequence[Gateway], pid: int) -> str:
    """The watched name of a gateway process (its pid when none of ``gateways`` has it)."""
    names = {p: name for gw in gateways for name, p in gw.pids().items()}
    return names.get(pid, str(pid))


def rest(setup: Rig) -> None:
    """Pause the driver and close every client."""
    setup.driver.ask("period", 0)
    ask_all(setup.clients, "close")


# --- one measured window ---------------------------------------------------------------------


def redis_cpu_us(setup: Rig) -> float:
    """Redis's own CPU time so far (``INFO cpu``, microseconds: finer than ``/proc``'s ticks)."""
    cpu = setup.store.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


def redis_upkeep(setup: Rig) -> float:
    """Redis's CPU (cores) with the clients connected and no pushes: what the cluster costs
    when nothing changes (leases, presence, the gateways' revocation and state checks)."""
    before, t0 = redis_cpu_us(setup), time.monotonic()
    time.sleep(UPKEEP_SECONDS)
    return (redis_cpu_us(setup) - before) / 1e6 / (time.monotonic() - t0)


def counters(setup: Rig, gateways: Sequence[Gateway]) -> dict[str, float]:
    """Redis's CPU and calls per command, and each single-process gateway's fan-out and relay
    counters (a supervisor's /metrics answers from whichever worker the kernel picks: left
    out)."""
    stats = setup.store.info("commandstats")
    found = {f"{REDIS_CALLS}{name.removeprefix('cmdstat_')}": float(value["calls"])
             for name, value in stats.items()} | {REDIS_CPU: redis_cpu_us(setup)}
    for gw in gateways:
        if not gw.supervised:
            values = gateway_counters(gw.port, (*FANOUT_COUNTERS, RELAY_SYNCS))
            found |= {f"{gw.name}:{name.removeprefix('expie_gateway_').removesuffix('_total')}":
                      value for name, value in values.items()}
    return found


@dataclass
class Measured:
    window: Window
    tapped: dict[str, float]
    driven: dict[str, Any]
    answers: list[Any]  # each client process's "collect", in ``Rig.clients`` order


def measure_window(setup: Rig, args: argparse.Namespace, period: float,
                   gateways: Sequence[Gateway]) -> Measured:
    pids = setup.pids() | {name: pid for gw in gateways for name, pid in gw.pids().items()}
    try:
        window, tapped, driven = drive_window(
            setup.clients, setup.tap, setup.driver, args, period,
            lambda: watch(pids, setup.sim_port, args.duration, lambda: counters(setup, gateways)))
    except FileNotFoundError as exc:  # a /proc entry: a watched process exited
        raise BenchError(f"a watched process exited during a window ({exc}); see the gateway "
                         "logs") from exc
    return Measured(window, tapped, driven, ask_all(setup.clients, "collect", tapped))


def machine(measured: Measured, deliveries: int, watched: Sequence[Gateway],
            redis_idle: float) -> dict[str, Any]:
    """CPU of every process (cores), Redis per delivery and per message, the upstream count."""
    window, cpu = measured.window, measured.window.cpu
    clients = [value for name, value in cpu.items() if name.startswith("client_")]
    gateways = {name: cpu[name] for gw in watched for name in gw.pids()}
    cores = {**gateways, "gateways_total": sum(gateways.values()),
             **{name: cpu[name] for name in ("simulator", "redis", "tap", "driver")},
             "clients_total": sum(clients), "clients_busiest_process": max(clients)}
    return {
        "cpu_cores": {name: round(value, 3) for name, value in cores.items()},
        "machine_busy_cores": window.busy,
        "other_busy_cores": round(window.busy - sum(cpu.values()), 3),
        "load_average": window.load,
        "redis": redis_report(measured, deliveries, redis_idle),
        "gateway_counters": gateway_deltas(window, watched),
        "upstream_depth_subscriptions":
            int(window.stats["subscriptions"]["depth"].get(MARKET, 0)) - 1,  # minus the tap's
    }


def gateway_deltas(window: Window, watched: Sequence[Gateway]) -> dict[str, dict[str, float]]:
    """Each single-process gateway's counters over the window, by gateway."""
    deltas: dict[str, dict[str, float]] = {}
    for name, value in window.counters.items():
        owner, _, counter = name.partition(":")
        if any(gw.name == owner for gw in watched):
            deltas.setdefault(owner, {})[counter] = value
    return deltas


def redis_report(measured: Measured, deliveries: int, redis_idle: float) -> dict[str, Any]:
    """Redis's CPU in the window (``/proc``) per delivery and per message it published; per
    message again above its upkeep (``redis_upkeep``, both from its own ``INFO cpu``)."""
    window = measured.window
    spent = window.cpu["redis"] * window.seconds
    calls = {name.removeprefix(REDIS_CALLS): value for name, value in window.counters.items()
             if name.startswith(REDIS_CALLS)}
    published = calls.get("publish", 0)
    above = window.counters[REDIS_CPU] / 1e6 - redis_idle * window.seconds

    def per_message(seconds: float) -> float | None:
        return round(seconds / published * 1e6, 1) if published else None

    return {"cpu_cores": round(window.cpu["redis"], 3),
            "cpu_us_per_delivery": round(spent / max(deliveries, 1) * 1e6, 3),
            "cpu_us_per_relayed_message": per_message(spent),
            "upkeep_cpu_cores": round(redis_idle, 4),
            "cpu_us_per_relayed_message_above_upkeep": per_message(above),
            "messages_published": round(published), "frames_tapped": len(measured.tapped),
            "commands": round(sum(calls.values())),
            "top_commands": dict(Counter(calls).most_common(TOP_COMMANDS))}


def latencies(answers: Sequence[Mapping[str, Any]]) -> array[float]:
    values = array("d")
    for answer in answers:
        values.frombytes(answer["latencies_ms"])
    return values


def brief(point: Mapping[str, Any]) -> str:
    return f"p50 {point['latency_ms'].get('p50')} p99 {point['latency_ms'].get('p99')} ms"


def added(follower: Mapping[str, float], leader: Mapping[str, float], key: str) -> float | None:
    ours, theirs = follower.get(key), leader.get(key)
    return None if ours is None or theirs is None else round(ours - theirs, 2)


# --- 1 and 2: relay cost and the follower's idle memory --------------------------------------


class ChannelTap:
    """A subscriber of the relay's Redis channel, in a thread of this process: when each of the
    leader's messages came out of Redis (to every subscriber at once), by its ask total. Set
    beside the tap's receipt it splits the relay's path: the leader's part (its own fan-out
    included, if that comes first) up to Redis, then the follower's."""

    def __init__(self, url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._records: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="channel-tap", daemon=True)

    def __enter__(self) -> ChannelTap:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(CHANNEL_READ * 4)
        self._pubsub.close()
        self._client.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=CHANNEL_READ)
            data = None if message is None else message["data"]
            if isinstance(data, bytes) and (found := ASK_TOTAL.search(data)):
                self._records.put((time.monotonic(), found.group(1)))

    def delays(self, tapped: Mapping[str, float]) -> array[float]:
        """Milliseconds from the tap's receipt to the channel's, of the frames of ``tapped``;
        what came before is dropped."""
        delays = array("d")
        while not self._records.empty():
            at, raw = self._records.get_nowait()
            if (upstream := tapped.get(canonical(raw))) is not None:
                delays.append((at - upstream) * 1000)
        return delays


def relay_cost(setup: Rig, args: argparse.Namespace) -> dict[str, Any]:
    half = len(setup.clients) // 2
    leaders, followers = setup.clients[:half], setup.clients[half:]
    with gateway(setup, "gateway_a", PAIR_PREFIX) as a, \
            gateway(setup, "gateway_b", PAIR_PREFIX) as b, \
            ChannelTap(setup.redis_url, f"{PAIR_PREFIX}relay:{STREAM}") as channel:
        first = leader_after_first_client(setup, a, leaders[0])
        if first != a.server.process.pid:
            raise BenchError(f"gateway A (pid {a.server.process.pid}) had the first client, but "
                             f"pid {first} holds the lease of {STREAM}")
        idle = idle_footprint(b.server.process.pid, "follower gateway", args.idle_clients,
                              lambda: open_on(followers, b.port, setup.bearer,
                                              args.idle_clients, "follower"))
        ask_all(followers, "close")
        open_on(leaders, a.port, setup.bearer, args.leader_clients - 1, "leader")
        open_on(followers, b.port, setup.bearer, args.follower_clients, "follower")
        upkeep = redis_upkeep(setup)
        samples = {"leader": array("d"), "follower": array("d"), "relay_channel": array("d")}
        windows = []
        for _ in range(args.rounds):
            measured = measure_window(setup, args, args.period, (a, b))
            got = {"leader": latencies(measured.answers[:half]),
                   "follower": latencies(measured.answers[half:]),
                   "relay_channel": channel.delays(measured.tapped)}
            for name, values in got.items():
                samples[name].extend(values)
            windows.append(relay_window(setup, args, measured, half, got["relay_channel"],
                                        (a, b), upkeep))
        rest(setup)
    return {"leader": "gateway_a", "follower": "gateway_b",
            "clients": {"leader": args.leader_clients, "follower": args.follower_clients},
            "period_s": args.period, "windows": windows, "all_windows": pooled(samples),
            "leader_held_lease_in_every_window": all(
                w["lease_holder"] == "gateway_a" for w in windows),
            "follower_idle": idle}


def pooled(samples: Mapping[str, array[float]]) -> dict[str, Any]:
    """Every window's latencies together: the figures the targets are checked on."""
    stats = {name: latency_stats(values) for name, values in samples.items()}
    return {"latency_ms": {"leader": stats["leader"], "follower": stats["follower"]},
            "tap_to_relay_channel_ms": stats["relay_channel"],
            "deliveries": {role: len(samples[role]) for role in ("leader", "follower")},
            "added_p50_ms": added(stats["follower"], stats["leader"], "p50"),
            "added_p99_ms": added(stats["follower"], stats["leader"], "p99")}


def relay_window(setup: Rig, args: argparse.Namespace, measured: Measured, half: int,
                 channel: Sequence[float], gateways: Sequence[Gateway],
                 redis_idle: float) -> dict[str, Any]:
    """The leader's clients (the first ``half`` client processes) and the follower's, side by
    side, and when the relay's messages came out of Redis."""
    seconds = measured.window.seconds
    groups = {"leader": (measured.answers[:half], args.leader_clients),
              "follower": (measured.answers[half:], args.follower_clients)}
    point: dict[str, Any] = {
        role: summarize(answers, measured.tapped, count, args.period, seconds)
        for role, (answers, count) in groups.items()}
    point["tap_to_relay_channel_ms"] = latency_stats(channel)
    point["added_p50_ms"] = added(point["follower"]["latency_ms"], point["leader"]["latency_ms"],
                                  "p50")
    point["added_p99_ms"] = added(point["follower"]["latency_ms"], point["leader"]["latency_ms"],
                                  "p99")
    point["driver_to_tap_ms"] = driver_to_tap(measured.driven["records"], measured.tapped)
    point["driver_failed_orders"] = measured.driven["failed"]
    point["lease_holder"] = holder_name(setup, gateways)
    point |= machine(measured, point["leader"]["deliveries"] + point["follower"]["deliveries"],
                     gateways, redis_idle)
    print(f"relay @ {args.period * 1000:g} ms: leader {brief(point['leader'])}, follower "
          f"{brief(point['follower'])}, cpu {point['cpu_cores']}", file=sys.stderr)
    return point


# --- 3: workers scaling ----------------------------------------------------------------------


def scaling(setup: Rig, args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """One gateway of ``processes`` workers (1: a plain ``serve``), swept alone."""
    name = f"workers{processes}"
    with gateway(setup, name, f"bench-relay-{name}:", processes) as gw:
        leader = process_name([gw], leader_after_first_client(setup, gw, setup.clients[0]))
        points: list[dict[str, Any]] = []
        spread = []
        for clients, periods in args.sweep.items():
            rest(setup)
            open_on(setup.clients, gw.port, setup.bearer, clients, name)
            spread.append(connections_per_process(gw))
            points += sweep_periods(periods, functools.partial(
                scaling_point, setup, args, gw, clients, redis_upkeep(setup)))
        rest(setup)
        return {"processes": gw.pids(), "first_leader": leader,
                "connections_per_process": spread, "sweep": points,
                "max_sustained": most_sustained(points)}


def scaling_point(setup: Rig, args: argparse.Namespace, gw: Gateway, clients: int,
                  redis_idle: float, period: float) -> dict[str, Any]:
    measured = measure_window(setup, args, period, [gw])
    point = summarize(measured.answers, measured.tapped, clients, period, measured.window.seconds)
    point["driver_to_tap_ms"] = driver_to_tap(measured.driven["records"], measured.tapped)
    point["driver_failed_orders"] = measured.driven["failed"]
    point["lease_holder"] = holder_name(setup, [gw])
    point |= machine(measured, point["deliveries"], [gw], redis_idle)
    print(f"{gw.name} {clients} clients @ {period * 1000:g} ms: {brief(point)}, "
          f"{point['deliveries_per_s']} deliveries/s, cpu {point['cpu_cores']}", file=sys.stderr)
    return point


# --- report ----------------------------------------------------------------------------------


def log_summary(directory: Path) -> dict[str, object]:
    """Per gateway log (WARNING and above only): counts by level, tracebacks, the first
    distinct messages."""
    summary: dict[str, object] = {}
    for path in sorted(directory.glob("*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        levels: Counter[str] = Counter()
        samples: list[str] = []
        for line in lines:
            if found := LOG_LINE.match(line):
                levels[found.group(1)] += 1
                message = " ".join(found.groups())[:300]
                if message not in samples and len(samples) < LOG_SAMPLES:
                    samples.append(message)
        summary[path.stem] = {"lines": len(lines), "by_level": dict(levels),
                              "tracebacks": sum(line.startswith("Traceback") for line in lines),
                              "first_distinct": samples}
    return summary


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=30)
    return done.stdout.strip()


def code_digest() -> str:
    """A digest of the code under test as it is on disk: ``git diff HEAD`` of ``CODE`` and the
    untracked files there, so that runs of one commit with different edits tell apart."""
    digest = hashlib.sha256(git("diff", "HEAD", "--", *CODE).encode())
    for name in sorted(git("ls-files", "--others", "--exclude-standard", "--", *CODE).split()):
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return digest.hexdigest()[:16]


def git_commit(code_before: str) -> dict[str, object]:
    """The commit, and whether the code under test had uncommitted edits, or changed during
    the run (others may be editing it: the figures are then of a mix)."""
    after = code_digest()
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted_changes": bool(git("status", "--porcelain", "--", *CODE)),
            "code_digest": after, "code_changed_during_run": after != code_before}


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None


def setup_notes(args: argparse.Namespace, load_before: list[float],
                code_before: str) -> dict[str, object]:
    """What ran and how, for a reader of the JSON."""
    return {
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "git": git_commit(code_before),
        "what": f"depth.subscribe {CLIENT_VIEW} by raw WebSocket clients in {args.processes} "
                "client processes (bench.ws_fanout's), through expie-gateway serve processes "
                "sharing a redis-server of this run's own (no persistence) with ws.cluster on "
                "(default lease_ttl and renew_interval); one push per period from the driver",
        "latency_definition": "client receipt - the tap's receipt of the same frame from the "
                              f"simulator (a direct client of {TAP_VIEW}, the gateways' "
                              "upstream view), monotonic clock",
        "relay_cost": {"clients": {"leader": args.leader_clients,
                                   "follower": args.follower_clients},
                       "period_s": args.period, "windows": args.rounds,
                       "client_processes": {"leader": args.processes // 2,
                                            "follower": args.processes - args.processes // 2},
                       "idle_clients_on_follower": args.idle_clients},
        "workers_scaling": {"sweep": {str(n): periods for n, periods in args.sweep.items()},
                            "sustained_means": f"p99 < {SWEEP_P99_MS:g} ms, >= 99 % of pushed "
                                               "frames delivered, pushes at >= 90 % of the rate",
                            "each_group_stops_at": "its first point not sustained"},
        "measurement": {"window_s": args.duration, "warmup_s": args.warmup,
                        "grace_after_window_s": GRACE,
                        "push_interval_s": args.push_interval,
                        "deliveries": "frames received whose tap receipt lies in the window",
                        "gateway_counters": "single-process gateways only: a supervisor's "
                                            "/metrics answers from one worker or the other",
                        "redis_cpu": "cpu_us_per_* from /proc over the window (10 ms ticks); "
                                     "*_above_upkeep from Redis's INFO cpu minus its rate with "
                                     "no pushes, read before the windows: it goes below 0 when a "
                                     "saturated gateway renews and checks less often than idle"},
    }


def same_points(scaled: Mapping[str, Any]) -> list[dict[str, object]]:
    """The points both gateways were measured at, side by side: at the same load, the p99 and
    the CPU tell apart what the maxima (one sweep step apart) may not."""
    def key(point: Mapping[str, Any]) -> tuple[int, float]:
        return point["clients"], point["period_s"]

    runs = {name: {key(p): p for p in run["sweep"]} for name, run in scaled.items()}
    common = sorted(set.intersection(*(set(points) for points in runs.values())),
                    key=lambda k: (k[0], -k[1]))
    return [{"clients": clients, "period_s": period,
             **{name: {"deliveries_per_s": points[clients, period]["deliveries_per_s"],
                       "p99_ms": points[clients, period]["latency_ms"].get("p99"),
                       "gateway_cores": points[clients, period]["cpu_cores"]["gateways_total"],
                       "machine_busy_cores": points[clients, period]["machine_busy_cores"]}
                for name, points in runs.items()}}
            for clients, period in common]


def target(value: float | None, bound: float, *, at_least: bool = False) -> dict[str, object]:
    met = value is not None and (value >= bound if at_least else value < bound)
    return {"target": f"{'>=' if at_least else '<'} {bound:g}", "measured": value, "met": met}


def report(args: argparse.Namespace, relay: Mapping[str, Any], scaled: Mapping[str, Any],
           logs: Mapping[str, object], load_before: list[float],
           code_before: str) -> dict[str, object]:
    best = {name: (run["max_sustained"] or {}).get("deliveries_per_s") for name, run in
            scaled.items()}
    ratio = round(best["workers_2"] / best["workers_1"], 3) \
        if best["workers_1"] and best["workers_2"] else None
    windows = [*relay["windows"], *(p for run in scaled.values() for p in run["sweep"])]
    upstream = [w["upstream_depth_subscriptions"] for w in windows]
    relay_windows = relay["windows"]
    rss_kb = relay["follower_idle"]["rss_per_connection_kb"]
    return {
        "benchmark": NAME,
        "setup": setup_notes(args, load_before, code_before),
        "relay_cost": relay,
        "workers_scaling": {**scaled, "max_sustained_deliveries_per_s": best,
                            "ratio_workers2_over_workers1": ratio,
                            "same_points": same_points(scaled)},
        "redis_cpu": {
            "relay_windows": [w["redis"] for w in relay_windows],
            "at_max_sustained": {name: next((p["redis"] for p in run["sweep"]
                                             if run["max_sustained"] and p["period_s"]
                                             == run["max_sustained"]["period_s"]), None)
                                 for name, run in scaled.items()},
        },
        "upstream_depth_subscriptions": {"per_window": upstream,
                                         "exactly_one": all(n == 1 for n in upstream)},
        "gateway_logs": logs,
        "targets": {
            "relay_added_p50_ms": target(relay["all_windows"]["added_p50_ms"],
                                         TARGET_ADDED_P50_MS),
            "relay_added_p99_ms": target(relay["all_windows"]["added_p99_ms"],
                                         TARGET_ADDED_P99_MS),
            "workers2_over_workers1_sustained": target(ratio, TARGET_WORKERS_RATIO,
                                                       at_least=True),
            "follower_idle_rss_kb_per_connection": target(rss_kb, TARGET_RSS_KB),
            "one_upstream_subscription_every_window": {
                "target": "1 in every window", "measured": upstream,
                "met": all(n == 1 for n in upstream)},
        },
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    raise_fd_limit()
    load_before, code_before = load_average(), code_digest()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        directory = Path(tmp)
        with rig(args, directory) as setup:
            relay = relay_cost(setup, args)
            scaled = {f"workers_{n}": scaling(setup, args, n) for n in (1, 2)}
        return report(args, relay, scaled, log_summary(directory), load_before, code_before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(NAME, lambda: run(args), targets_missed, args.check)


def targets_missed(result: dict[str, object]) -> bool:
    targets: Any = result["targets"]
    return not all(entry["met"] for entry in targets.values())


if __name__ == "__main__":
    sys.exit(main())
