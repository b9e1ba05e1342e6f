"""Placing and cancelling orders through the gateway versus direct to the simulator, same run.

Starts ``python -m simulator`` (uvloop, quiet market: the book is deterministic) and
``expie-gateway serve`` with ``redis.url`` set (a key prefix unique to the run; its keys are
deleted afterwards), so the audit trail, rate limits, idempotency keys and order owners all live
in Redis. Limits are raised far above the load (1,000,000 per second per user and per account)
and pacing is off: nothing is refused, what is measured is the cost of the machinery. The token
comes from ``expie-gateway token issue`` for demo-trader with scope orders:write (not desk-wide,
so a cancel checks the order's owner). A pair is a limit sell of 0.01 BCC at 1000 on BCCBTC (far
above the market: it rests, nothing fills) and the cancel of that order; direct pairs are the
same calls to the simulator with the account's Expie token. The account's BCC is topped up
(``/_sim/deposit``) when it would not cover ``RESTING_SELLS`` resting sells.

- Latency: one client, sequential pairs, targets alternated round by round: ``gateway``,
  ``gateway_idempotent`` (an ``Idempotency-Key`` on every call, as the desk's client sends) and
  ``direct``. p50/p99 per place, per cancel and per pair; what the gateway adds (gateway minus
  direct; target: added p50 under 2 ms per order); CPU per pair of the gateway, the simulator
  and the Redis server (``/proc``).
- Saturation: ``--generators`` processes of this module (aiohttp on uvloop) keep
  ``--concurrencies`` connections in total busy with pairs for ``--saturation-duration`` seconds:
  pairs/s through the gateway and direct, alternated. The CPU cores each process used (the
  generators included) show which one was the bottleneck.
- Where the time goes: the gateway's own classes (``RedisAuditLog.append``,
  ``RedisRateLimitStore.acquire`` with the desk's two checks, idempotency claim and complete,
  ownership record and lookup, ``parse_order_fields`` + ``validate_order``, audit event
  building), timed in this process against the same Redis: microseconds per call (wall, this
  process's CPU, the Redis server's CPU), summed per place and per cancel as the desk calls them
  and set beside the added latency. With ``py-spy`` installed the gateway is also sampled.

Prints one JSON object and writes ``bench/results/order_path.json``. Run from the repository
root: ``python -m bench.order_path``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import redis
import uvloop
from redis.asyncio import Redis

from bench.common import (
    HOST,
    BenchError,
    Server,
    alternate_runs,
    clean_environment,
    cpu_seconds,
    delete_prefixed,
    env_number,
    free_port,
    gateway_command,
    http_json,
    issue_token,
    parse_collapsed,
    percentile,
    py_spy,
    record_profile,
    redis_answers,
    redis_server_pid,
    run_benchmark,
    running,
    simulator_command,
    simulator_control,
    top_frames,
    write_gateway_config,
)
from gateway.core.audit_chain import AuditEvent, Kind, event_digest
from gateway.core.orders import (
    FORM_CONTENT_TYPE,
    MarketRules,
    OrderRequest,
    market_rules,
    parse_order_fields,
    validate_order,
)
from gateway.core.principal import Principal, Scope
from gateway.services.call_context import CallContext, Step, audit_event
from gateway.stores.audit import RedisAuditLog
from gateway.stores.idempotency import RedisIdempotencyStore, StoredResponse
from gateway.stores.ownership import RedisOwnershipStore
from gateway.stores.rate_limits import Limit, LimitCheck, RedisRateLimitStore
from gateway.stores.redis_client import connect_redis

NAME = "order_path"
MARKET = "BCCBTC"
USER = "demo-trader"
ACCOUNT = "desk-alpha"
ORDER_BODY = b"side=1&amount=0.01&price=1000"
ORDER_AMOUNT = Decimal("0.01")
RESTING_SELLS = 10_000  # resting sells the account's BCC must cover, whatever goes wrong
HIGH_LIMIT = 1_000_000  # per 1 s: far above any load here
TARGET_ADDED_P50_MS = 2.0
GATEWAY_WAYS = ("gateway", "gateway_idempotent")
GENERATOR_START_DELAY = 3.0  # seconds for generators to start, connect and warm up
STEP_WARMUP = 100
# A placed order as the simulator answers it: what the idempotency store keeps.
PLACED_BODY = json.dumps({
    "id": 1_000_001, "market": MARKET, "source": "api", "type": 1, "side": 1, "user": 100056,
    "ctime": 1700000000.123456, "mtime": 1700000000.123456, "price": "1000", "amount": "0.01",
    "taker_fee": "0", "maker_fee": "0", "left": "0.01", "deal_stock": "0", "deal_money": "0",
    "deal_fee": "0"}).encode()
# The desk's calls per order, in its order (gateway.services.order_desk): the modelled cost.
PLACE_STEPS = ("order_validation", "order_derivations", "rate_limit_acquire",
               "audit_event_build", "audit_append", "audit_event_build", "audit_append",
               "ownership_record")
CANCEL_STEPS = ("ownership_owners", "rate_limit_acquire", "audit_event_build", "audit_append",
                "audit_event_build", "audit_append")
IDEMPOTENT_STEPS = ("idempotency_claim", "idempotency_complete")
# Areas of the gateway's CPU samples, most specific first: a stack counts in the first it matches.
AREAS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("token_verification",
     re.compile(r"gateway/auth/(tokens|authenticator)\.py|/jwt/|/cryptography/"),
     "Authenticator/TokenVerifier/PyJWT/cryptography frames"),
    ("redis_stores", re.compile(r"\(gateway/stores/"),
     "the Redis stores: audit append, rate limits, idempotency, ownership (redis-py within)"),
    ("upstream_call", re.compile(r"^UpstreamClient\.send "),
     "UpstreamClient.send: the aiohttp client call to the exchange"),
    ("rest_of_handler", re.compile(r"\(gateway/(web|services|core)/"),
     "the order routes and the desk around those: validation, audit events, glue"),
)
OUTSIDE = ("aiohttp_server_outside_handler",
           "request parsing, routing, writing responses, the event loop")
OURS = re.compile(r"\(gateway/(web|services|stores|core|upstream|auth)/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=int(env_number("BENCH_PAIRS", 2000, 100,
                                                                    20_000)),
                        help="latency: measured pairs per target (env BENCH_PAIRS)")
    parser.add_argument("--rounds", type=int, default=int(env_number("BENCH_ROUNDS", 4, 1, 9)),
                        help="latency: alternating rounds the pairs are split into")
    parser.add_argument("--warmup-pairs", type=int, default=200)
    parser.add_argument("--concurrencies", default="16,64",
                        help="saturation: connections in total, comma-separated")
    parser.add_argument("--saturation-duration", type=float,
                        default=env_number("BENCH_DURATION", 8, 1, 60),
                        help="saturation: seconds per run (env BENCH_DURATION)")
    parser.add_argument("--saturation-rounds", type=int, default=2)
    parser.add_argument("--generators", type=int, default=2,
                        help="saturation: load generator processes sharing the connections")
    parser.add_argument("--step-calls", type=int, default=2000,
                        help="calls per step timed in this process")
    parser.add_argument("--profile", type=float, default=env_number("BENCH_PROFILE", 8, 0, 60),
                        help="seconds of py-spy sampling of the gateway under load (0 or py-spy "
                             "missing: skipped; env BENCH_PROFILE)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when an added p50 per order is 2 ms or more")
    for hidden in ("--base", "--token-file", "--start-at", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--idempotent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.concurrencies = sorted({max(1, int(c)) for c in args.concurrencies.split(",") if c})
    args.rounds = min(args.pairs, max(1, args.rounds))
    args.generators = max(1, args.generators)
    return args


# --- the client: place-then-cancel pairs ---------------------------------------------------------


@dataclass(frozen=True)
class Way:
    """Where pairs go: a base URL, its bearer token, and whether every call carries a key."""

    base: str
    token: str
    idempotent: bool = False


class PairClient:
    """Sequential place + cancel pairs on one session; any answer but 200 raises BenchError."""

    def __init__(self, session: aiohttp.ClientSession, way: Way) -> None:
        self._session = session
        self._way = way
        self._orders = f"{way.base}/v1/markets/{MARKET}/orders"
        self._auth = {"Authorization": f"Bearer {way.token}"}
        self._key_prefix = f"bench-{uuid.uuid4().hex[:16]}-"
        self._keys = 0

    async def pair(self) -> tuple[int, int]:
        """Nanoseconds of the place and of the cancel."""
        started = time.perf_counter_ns()
        body = await self._post(self._orders, ORDER_BODY, {"Content-Type": FORM_CONTENT_TYPE})
        placed = time.perf_counter_ns()
        await self._post(f"{self._orders}/{_order_id(body)}/_cancel", None, {})
        return placed - started, time.perf_counter_ns() - placed

    async def _post(self, url: str, data: bytes | None, headers: dict[str, str]) -> bytes:
        headers.update(self._auth)
        if self._way.idempotent:
            self._keys += 1
            headers["Idempotency-Key"] = f"{self._key_prefix}{self._keys}"
        async with self._session.post(url, data=data, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise BenchError(f"POST {url}: {response.status} {body[:300]!r}")
            return body


def _order_id(body: bytes) -> int:
    order_id = json.loads(body).get("id")
    if not isinstance(order_id, int):
        raise BenchError(f"a placed order without an id: {body[:300]!r}")
    return order_id


def new_session(connections: int) -> aiohttp.ClientSession:
    """A session of at most ``connections`` connections (call it in a running loop)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=30))


# --- load generator processes (--generate) -------------------------------------------------------


def generate(args: argparse.Namespace) -> int:
    """Warm up, wait for ``--start-at``, run pairs on ``--connections`` for ``--duration`` s;
    write one JSON object to ``--out``: pairs completed in time, their latencies, failures,
    own CPU. (A file, not stdout: a pipe may be left non-blocking and drop what overflows it.)"""
    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    way = Way(args.base, token, args.idempotent)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_generate(way, args.connections, float(args.saturation_duration),
                                      float(args.start_at)))
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


async def _generate(way: Way, connections: int, duration: float, start_at: float
                    ) -> dict[str, object]:
    async with new_session(connections) as session:
        client = PairClient(session, way)
        await asyncio.gather(*(client.pair() for _ in range(connections)))  # opens connections
        late = max(0.0, time.time() - start_at)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu, end = time.process_time(), time.monotonic() + duration
        workers = await asyncio.gather(*(_worker(client, end) for _ in range(connections)))
        cpu = time.process_time() - cpu
    failures = [failure for _, failure in workers if failure]
    return {"pair_ns": [ns for latencies, _ in workers for ns in latencies],
            "failures": len(failures), "first_failure": failures[0] if failures else "",
            "cpu_s": cpu, "late_start_s": late}


async def _worker(client: PairClient, end: float) -> tuple[list[int], str]:
    """Pairs until ``end``; only those finished by then count. Stops at the first failure."""
    latencies: list[int] = []
    while time.monotonic() < end:
        try:
            place, cancel = await client.pair()
        except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
            return latencies, f"{type(exc).__name__}: {exc}"
        if time.monotonic() <= end:
            latencies.append(place + cancel)
    return latencies, ""


# --- the deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    simulator: Server
    gateway: Server
    ways: dict[str, Way]
    token_files: dict[str, Path]
    directory: Path  # for the generators' results
    watched: dict[str, int]  # process name -> PID whose CPU is measured
    prefix: str
    balance: dict[str, object]


def gateway_extra(redis_url: str, prefix: str) -> dict[str, object]:
    """Redis for every store and the audit trail (any Redis: one that keeps nothing on disk is
    fine for a measurement); limits that never refuse; no pacing."""
    high = {"count": HIGH_LIMIT, "window": 1}
    return {
        "redis": {"url": redis_url, "key_prefix": prefix, "require_persistence": False},
        "audit": {"backend": "redis"},
        "orders": {"limits": {"place": high, "cancel": high, "read": high, "market_data": high},
                   "account_limits": {"place": high, "cancel": high},
                   "pacing": {"rate": 0}},
    }


@contextlib.contextmanager
def deploy(args: argparse.Namespace, directory: Path) -> Iterator[Deployment]:
    note = redis_answers(args.redis_url)
    if note is not None:
        raise BenchError(f"{note}: the order path is measured with its stores in Redis")
    sim_port, gw_port = free_port(), free_port()
    prefix = f"bench:{NAME}:{uuid.uuid4().hex}:"
    config = write_gateway_config(directory, gw_port, sim_port,
                                  extra=gateway_extra(args.redis_url, prefix))
    token_files = {"gateway": directory / "gateway-token",
                   "direct": directory / f"account-{ACCOUNT}"}
    token_files["gateway"].write_text(issue_token(config, USER, Scope.ORDERS_WRITE.value),
                                      encoding="utf-8")
    token_files["gateway"].chmod(0o600)
    tokens = {name: path.read_text(encoding="utf-8").strip() for name, path in token_files.items()}
    sim_base, gw_base = f"http://{HOST}:{sim_port}", f"http://{HOST}:{gw_port}"
    with contextlib.ExitStack() as stack:
        stack.callback(delete_prefixed, args.redis_url, prefix)  # runs after both servers stop
        simulator, _ = stack.enter_context(running(
            "simulator", simulator_command(sim_port, 0.0), f"{sim_base}/v1/markets",
            {"Authorization": f"Bearer {tokens['direct']}"}))
        gateway, _ = stack.enter_context(running(
            "gateway", gateway_command(config), f"{gw_base}/readyz", {},
            env=clean_environment()))
        watched = {"gateway": gateway.process.pid, "simulator": simulator.process.pid}
        redis_pid = redis_server_pid(args.redis_url)
        if redis_pid is not None:
            watched["redis"] = redis_pid
        ways = {"gateway": Way(gw_base, tokens["gateway"]),
                "gateway_idempotent": Way(gw_base, tokens["gateway"], idempotent=True),
                "direct": Way(sim_base, tokens["direct"])}
        balance = ensure_balance(sim_base, tokens["direct"])
        yield Deployment(simulator, gateway, ways, token_files, directory, watched, prefix,
                         balance)


def ensure_balance(sim_base: str, token: str) -> dict[str, object]:
    """Deposit BCC when the account's available BCC would not cover ``RESTING_SELLS`` sells."""
    needed = ORDER_AMOUNT * RESTING_SELLS
    available = _available_bcc(sim_base, token)
    deposited = max(Decimal(0), needed - available)
    if deposited:
        http_json(f"{sim_base}/_sim/deposit", simulator_control(),
                  {"account": ACCOUNT, "asset": "BCC", "amount": str(deposited)})
        available = _available_bcc(sim_base, token)
    if available < needed:
        raise BenchError(f"{ACCOUNT} has {available} BCC available, {needed} needed")
    return {"asset": "BCC", "available": str(available), "deposited": str(deposited),
            "resting_sells_covered": int(available // ORDER_AMOUNT)}


def _available_bcc(sim_base: str, token: str) -> Decimal:
    rows = http_json(f"{sim_base}/v1/balance/summary", {"Authorization": f"Bearer {token}"})
    for row in rows:
        if row["coin_code"] == "BCC":
            return Decimal(row["available_amount"])
    raise BenchError("the balance summary has no BCC")


def cpu_snapshot(watched: Mapping[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in watched.items()}


def cpu_spent(before: Mapping[str, float], watched: Mapping[str, int]) -> dict[str, float]:
    after = cpu_snapshot(watched)
    return {name: after[name] - before[name] for name in before}


# --- latency: one client, sequential pairs -------------------------------------------------------


@dataclass
class LatencyRound:
    place_ns: list[int]
    cancel_ns: list[int]
    cpu_us_per_pair: dict[str, float]


def latency(deployment: Deployment, args: argparse.Namespace) -> dict[str, object]:
    per_round = max(1, args.pairs // args.rounds)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sessions = {name: runner.run(_open_session(1)) for name in deployment.ways}
        try:
            clients = {name: PairClient(sessions[name], way)
                       for name, way in deployment.ways.items()}
            for client in clients.values():
                runner.run(_pairs(client, args.warmup_pairs))

            def one_round(name: str) -> LatencyRound:
                before = cpu_snapshot(deployment.watched)
                times = runner.run(_pairs(clients[name], per_round))
                spent = cpu_spent(before, deployment.watched)
                measured = LatencyRound([p for p, _ in times], [c for _, c in times],
                                        {k: round(v / len(times) * 1e6, 1)
                                         for k, v in spent.items()})
                print(f"latency {name}: place p50 {_ms(percentile(measured.place_ns, 50))} ms, "
                      f"cancel p50 {_ms(percentile(measured.cancel_ns, 50))} ms", file=sys.stderr)
                return measured

            rounds = alternate_runs(list(deployment.ways), args.rounds, one_round)
        finally:
            for session in sessions.values():
                runner.run(session.close())
    return latency_report(rounds, per_round, args)


async def _open_session(connections: int) -> aiohttp.ClientSession:
    return new_session(connections)


async def _pairs(client: PairClient, count: int) -> list[tuple[int, int]]:
    return [await client.pair() for _ in range(count)]


def latency_report(rounds: Mapping[str, Sequence[LatencyRound]], per_round: int,
                   args: argparse.Namespace) -> dict[str, object]:
    summary = {name: _latency_summary(measured) for name, measured in rounds.items()}
    direct = summary["direct"]
    added = {name: {what: {"p50_ms": round(summary[name][what]["p50_ms"]
                                           - direct[what]["p50_ms"], 3),
                           "p99_ms": round(summary[name][what]["p99_ms"]
                                           - direct[what]["p99_ms"], 3)}
                    for what in ("place", "cancel", "pair")}
             for name in GATEWAY_WAYS}
    return {
        "client": "one aiohttp client on uvloop in the benchmark process, one connection per "
                  "target, pairs one after another",
        "pairs_per_target": per_round * args.rounds, "rounds": args.rounds,
        "warmup_pairs_per_target": args.warmup_pairs,
        "statistic": "percentiles over every pair of every round; targets alternated",
        **summary,
        "added": added,
        "added_note": "gateway percentile minus direct percentile, per call",
        "target_added_p50_ms": TARGET_ADDED_P50_MS,
        "target_met": {name: {what: added[name][what]["p50_ms"] < TARGET_ADDED_P50_MS
                              for what in ("place", "cancel")} for name in GATEWAY_WAYS},
    }


def _latency_summary(rounds: Sequence[LatencyRound]) -> dict[str, Any]:
    place = [ns for r in rounds for ns in r.place_ns]
    cancel = [ns for r in rounds for ns in r.cancel_ns]
    pair = [p + c for r in rounds for p, c in zip(r.place_ns, r.cancel_ns, strict=True)]
    names = rounds[0].cpu_us_per_pair
    return {
        "place": _stats(place), "cancel": _stats(cancel), "pair": _stats(pair),
        "place_p50_ms_by_round": [_ms(percentile(r.place_ns, 50)) for r in rounds],
        "cancel_p50_ms_by_round": [_ms(percentile(r.cancel_ns, 50)) for r in rounds],
        "cpu_us_per_pair": {name: round(statistics.median(r.cpu_us_per_pair[name]
                                                          for r in rounds), 1)
                            for name in names},
    }


def _stats(ns: Sequence[int]) -> dict[str, float]:
    return {"p50_ms": _ms(percentile(ns, 50)), "p99_ms": _ms(percentile(ns, 99)),
            "mean_ms": _ms(statistics.fmean(ns))}


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


# --- saturation: generator processes -------------------------------------------------------------


@dataclass
class SaturationRun:
    pairs: int
    failures: int
    first_failure: str
    pair_ns: list[int]
    cores: dict[str, float]  # CPU seconds per second of the run, by process
    late_start_s: float


def generator_command(deployment: Deployment, way: str, connections: int, duration: float,
                      start_at: float, out: Path) -> list[str]:
    token = deployment.token_files["direct" if way == "direct" else "gateway"]
    command = [sys.executable, "-m", "bench.order_path", "--generate",
               "--base", deployment.ways[way].base, "--token-file", str(token),
               "--connections", str(connections), "--saturation-duration", str(duration),
               "--start-at", repr(start_at), "--out", str(out)]
    return [*command, "--idempotent"] if deployment.ways[way].idempotent else command


def saturate(deployment: Deployment, way: str, connections: int, duration: float,
             generators: int) -> SaturationRun:
    """One run: the generators share ``connections``; CPU is read over the measured window."""
    shares = [share for share in (connections // generators + (i < connections % generators)
                                  for i in range(generators)) if share]
    start_at = time.time() + GENERATOR_START_DELAY
    outs = [deployment.directory / f"generator-{number}.json" for number in range(len(shares))]
    processes = [subprocess.Popen(
        generator_command(deployment, way, share, duration, start_at, out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for share, out in zip(shares, outs, strict=True)]
    try:
        time.sleep(max(0.0, start_at - time.time()))
        before = cpu_snapshot(deployment.watched)
        time.sleep(max(0.0, start_at + duration - time.time()))
        spent = cpu_spent(before, deployment.watched)
        outputs = [_generator_output(process, out, duration)
                   for process, out in zip(processes, outs, strict=True)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    pair_ns = [ns for output in outputs for ns in output["pair_ns"]]
    cores = {name: round(seconds / duration, 3) for name, seconds in spent.items()}
    for number, output in enumerate(outputs):
        cores[f"generator_{number + 1}"] = round(output["cpu_s"] / duration, 3)
    failures = [output["first_failure"] for output in outputs if output["failures"]]
    return SaturationRun(len(pair_ns), sum(output["failures"] for output in outputs),
                         failures[0] if failures else "", pair_ns, cores,
                         max(output["late_start_s"] for output in outputs))


def _generator_output(process: subprocess.Popen[bytes], out: Path, duration: float
                      ) -> dict[str, Any]:
    _, err = process.communicate(timeout=duration + GENERATOR_START_DELAY + 60)
    if process.returncode != 0 or not out.exists():
        raise BenchError(f"a load generator failed ({process.returncode}): "
                         f"{err.decode(errors='replace')[-1500:]}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return result


def saturation(deployment: Deployment, args: argparse.Namespace) -> dict[str, object]:
    rows = []
    for connections in args.concurrencies:
        def one_run(way: str, connections: int = connections) -> SaturationRun:
            run = saturate(deployment, way, connections, args.saturation_duration,
                           args.generators)
            print(f"saturation c{connections} {way}: "
                  f"{run.pairs / args.saturation_duration:.0f} pairs/s, cores {run.cores}",
                  file=sys.stderr)
            return run

        runs = alternate_runs(["gateway", "direct"], args.saturation_rounds, one_run)
        rows.append(_saturation_row(connections, runs, args))
    return {
        "generator": f"{args.generators} processes of this module (aiohttp on uvloop) sharing "
                     "the connections; each connection runs pairs back to back",
        "duration_s": args.saturation_duration, "rounds": args.saturation_rounds,
        "statistic": "median pairs/s of rounds; latency percentiles over every pair",
        "by_connections": rows,
        "cores_note": "CPU seconds per second of the run for each process: near 1.0 is a "
                      f"process at its limit (one event loop); the machine has "
                      f"{os.cpu_count()} cores for all of them",
    }


def _saturation_row(connections: int, runs: Mapping[str, Sequence[SaturationRun]],
                    args: argparse.Namespace) -> dict[str, object]:
    row: dict[str, Any] = {"connections": connections}
    for way, measured in runs.items():
        if any(run.failures for run in measured):
            first = next(run.first_failure for run in measured if run.failures)
            raise BenchError(f"saturation {way} c{connections}: failed pairs ({first})")
        rates = [run.pairs / args.saturation_duration for run in measured]
        pair_ns = [ns for run in measured for ns in run.pair_ns]
        row[way] = {
            "pairs_per_s": round(statistics.median(rates), 1),
            "orders_per_s": round(statistics.median(rates) * 2, 1),
            "pairs_per_s_by_round": [round(rate, 1) for rate in rates],
            "pair_p50_ms": _ms(percentile(pair_ns, 50)),
            "pair_p99_ms": _ms(percentile(pair_ns, 99)),
            "cores_by_round": [run.cores for run in measured],
            "cpu_us_per_pair": {
                name: round(statistics.median(run.cores[name] * args.saturation_duration
                                              / run.pairs * 1e6 for run in measured), 1)
                for name in measured[0].cores},
            "generator_late_start_s": round(max(run.late_start_s for run in measured), 3),
        }
    row["gateway_to_direct_ratio"] = round(row["gateway"]["pairs_per_s"]
                                           / row["direct"]["pairs_per_s"], 3)
    return row


# --- where the time goes: the gateway's classes timed in this process ----------------------------


def step_costs(deployment: Deployment, args: argparse.Namespace) -> dict[str, object]:
    markets = http_json(f"{deployment.ways['direct'].base}/v1/markets",
                        {"Authorization": f"Bearer {deployment.ways['direct'].token}"})
    rules = market_rules(json.dumps(markets).encode())[MARKET]
    redis_pid = deployment.watched.get("redis")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        steps = runner.run(_measure_steps(args.redis_url, f"{deployment.prefix}steps:", rules,
                                          args.step_calls, redis_pid))
    return steps


async def _measure_steps(url: str, prefix: str, rules: MarketRules, calls: int,
                         redis_pid: int | None) -> dict[str, object]:
    client = connect_redis(url)  # the gateway's own client settings
    try:
        measured: dict[str, object] = {name: await _timed(call, calls, redis_pid)
                    for name, call in _steps(client, prefix, rules).items()}
    finally:
        await client.aclose()
    return measured


def _steps(client: Redis, prefix: str, rules: MarketRules
           ) -> dict[str, Callable[[int], Awaitable[object]]]:
    """Each step as the desk calls it, ``i`` making keys unique where the store needs it."""
    audit, limits = RedisAuditLog(client, prefix), RedisRateLimitStore(client, prefix)
    idempotency = RedisIdempotencyStore(client, prefix)
    owners = RedisOwnershipStore(client, prefix, ttl=3600)
    order = validate_order(MARKET, parse_order_fields(ORDER_BODY, FORM_CONTENT_TYPE), rules)
    checks = (LimitCheck(f"user:{USER}:place", Limit(HIGH_LIMIT, 1.0)),
              LimitCheck(f"account:{ACCOUNT}:place", Limit(HIGH_LIMIT, 1.0)))
    context = _context()
    event = _intent(context, order)
    stored = StoredResponse(200, PLACED_BODY, "application/json")
    fingerprint = order.fingerprint()

    async def validation(_i: int) -> object:
        return validate_order(MARKET, parse_order_fields(ORDER_BODY, FORM_CONTENT_TYPE), rules)

    async def derivations(_i: int) -> object:
        return order.fingerprint(), order.form_body(), order.params()

    async def event_build(_i: int) -> object:
        return _intent(context, order)

    async def event_digests(_i: int) -> object:
        return event.canonical_json(), event_digest(event)

    return {
        "redis_ping": lambda _i: client.ping(),
        "order_validation": validation,
        "order_derivations": derivations,
        "audit_event_build": event_build,
        "audit_event_canonical_json_and_digest": event_digests,
        "audit_append": lambda _i: audit.append(event),
        "rate_limit_acquire": lambda _i: limits.acquire(checks),
        "idempotency_claim": lambda i: idempotency.claim(USER, f"k{i}", fingerprint, 3600),
        "idempotency_complete": lambda i: idempotency.complete(USER, f"k{i}", stored, 3600),
        "ownership_record": lambda i: owners.record(ACCOUNT, 10**9 + i, USER),
        "ownership_owners": lambda i: owners.owners(ACCOUNT, [10**9 + i]),
    }


def _context() -> CallContext:
    now = time.time()
    principal = Principal(USER, ACCOUNT, frozenset({Scope.ORDERS_WRITE}), None,
                          uuid.uuid4().hex, now, now + 3600)
    return CallContext(principal, uuid.uuid4().hex[:24], uuid.uuid4().hex, HOST,
                       f"Python/{platform.python_version()} aiohttp/{aiohttp.__version__}")


def _intent(context: CallContext, order: OrderRequest) -> AuditEvent:
    return audit_event(context, Step(Kind.INTENT, "place", MARKET, order.params(),
                                     uuid.uuid4().hex), time.time)


async def _timed(call: Callable[[int], Awaitable[object]], calls: int,
                 redis_pid: int | None) -> dict[str, float | None]:
    """Microseconds per call: wall p50 and mean, this process's CPU, the Redis server's CPU.
    Warm-up calls get negative ``i`` so keys stay unique."""
    for i in range(STEP_WARMUP):
        await call(-1 - i)
    wall: list[int] = []
    cpu, server = time.process_time(), cpu_seconds(redis_pid) if redis_pid else 0.0
    for i in range(calls):
        started = time.perf_counter_ns()
        await call(i)
        wall.append(time.perf_counter_ns() - started)
    cpu = time.process_time() - cpu
    redis_cpu = (cpu_seconds(redis_pid) - server) / calls * 1e6 if redis_pid else None
    return {"wall_p50_us": round(percentile(wall, 50) / 1000, 1),
            "wall_mean_us": round(statistics.fmean(wall) / 1000, 1),
            "client_cpu_us": round(cpu / calls * 1e6, 1),
            "redis_server_cpu_us": None if redis_cpu is None else round(redis_cpu, 1)}


def breakdown(steps: Mapping[str, Any], lat: Mapping[str, Any]) -> dict[str, object]:
    """The steps summed per call as the desk makes them, beside what the gateway adds, and
    their share of the gateway's measured CPU per pair."""
    def total(names: Sequence[str], field: str) -> float:
        return round(sum(steps[name][field] or 0.0 for name in names), 1)

    model: dict[str, object] = {}
    for way in GATEWAY_WAYS:
        extra = IDEMPOTENT_STEPS if way == "gateway_idempotent" else ()
        calls = {"place": (*PLACE_STEPS, *extra), "cancel": (*CANCEL_STEPS, *extra)}
        for call, names in calls.items():
            added_us = lat["added"][way][call]["p50_ms"] * 1000
            model[f"{way}_{call}"] = {
                "steps": list(names),
                "redis_round_trips": sum(1 for name in names if _is_redis(name)),
                "steps_wall_us": total(names, "wall_p50_us"),
                "steps_client_cpu_us": total(names, "client_cpu_us"),
                "steps_redis_server_cpu_us": total(names, "redis_server_cpu_us"),
                "measured_added_p50_us": round(added_us, 1),
                "rest_of_added_p50_us": round(added_us - total(names, "wall_p50_us"), 1),
            }
        pair_cpu = lat[way]["cpu_us_per_pair"]["gateway"]
        steps_cpu = total((*calls["place"], *calls["cancel"]), "client_cpu_us")
        model[f"{way}_gateway_cpu_per_pair"] = {
            "measured_gateway_cpu_us": pair_cpu, "steps_client_cpu_us": steps_cpu,
            "steps_share": round(steps_cpu / pair_cpu, 3) if pair_cpu else None}
    return {
        "method": "each step timed alone in the benchmark process with the gateway's own "
                  "classes and Redis client settings against the same Redis (sequential "
                  "awaited calls after a warm-up), then summed in the desk's order",
        "per_call": model,
        "redis_command_floor_us": steps["redis_ping"],
        "notes": [
            "rest_of_added_p50_us: what the added p50 holds beyond these steps: the extra HTTP "
            "hop (aiohttp server in the gateway, its client to the exchange), token "
            "verification, routing, request ids, market rules lookup, JSON and glue",
            "redis_command_floor_us: one PING through the same client; nearly all of its wall "
            "time is client CPU (redis-py asyncio), so every Redis round trip on the order "
            "path costs the gateway about that much CPU whatever the command",
        ],
    }


def _is_redis(step: str) -> bool:
    return step.startswith(("audit_append", "rate_limit", "idempotency", "ownership"))


# --- checks after the run, py-spy, report --------------------------------------------------------


def machinery_check(deployment: Deployment, url: str) -> dict[str, object]:
    """What the run left in Redis (by kind of key) and the simulator's order counts: proof the
    stores were used and that every placed order was cancelled."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        kinds = Counter(key.decode()[len(deployment.prefix):].split(":", 1)[0]
                        for key in client.scan_iter(match=f"{deployment.prefix}*", count=1000))
        records = int(client.llen(f"{deployment.prefix}audit:records"))
    base = deployment.ways["direct"].base
    stats = http_json(f"{base}/_sim/stats", simulator_control())
    ready = http_json(f"{deployment.ways['gateway'].base}/readyz", {})
    pending = http_json(f"{base}/v1/markets/{MARKET}/orders/_pending",
                        {"Authorization": f"Bearer {deployment.ways['direct'].token}"})
    if pending["total"] or ready["audit_spool"]["pending"] or ready["audit_spool"]["dropped"]:
        raise BenchError(f"orders left resting or audit records spooled: {pending['total']}, "
                         f"{ready['audit_spool']}")
    return {"redis_keys_by_kind": dict(kinds), "audit_records": records,
            "simulator_orders": stats["orders"], "orders_left_resting": pending["total"],
            "gateway_audit_spool": ready["audit_spool"]}


def profile_gateway(deployment: Deployment, args: argparse.Namespace) -> dict[str, object]:
    tool = py_spy()
    if tool is None or args.profile <= 0:
        return {"skipped": "py-spy is not installed (pip install py-spy)" if tool is None
                else "--profile 0"}
    # py-spy starts now, the load GENERATOR_START_DELAY later: sample that much longer
    collapsed, failure = record_profile(
        tool, deployment.gateway.process.pid, args.profile + GENERATOR_START_DELAY,
        lambda: saturate(deployment, "gateway_idempotent", args.concurrencies[0],
                         args.profile + 1, args.generators))
    if collapsed is None:
        return {"skipped": failure}
    stacks = parse_collapsed(collapsed)
    samples = sum(stacks.values())
    if samples == 0:
        return {"skipped": "py-spy recorded no samples"}
    areas: Counter[str] = Counter()
    for stack, count in stacks.items():
        areas[next((name for name, pattern, _ in AREAS
                    if any(pattern.search(frame) for frame in stack)), OUTSIDE[0])] += count
    return {"tool": "py-spy record --rate 200 (idle samples excluded), gateway_idempotent at "
                    f"{args.concurrencies[0]} connections (the first seconds are the "
                    "generators' start)",
            "samples": samples,
            "areas": {name: round(areas[name] / samples, 4)
                      for name in [*(name for name, _, _ in AREAS), OUTSIDE[0]]},
            "areas_meaning": {name: meaning for name, _, meaning in AREAS}
            | {OUTSIDE[0]: OUTSIDE[1]},
            "top_self": top_frames(stacks, samples, lambda stack: [stack[-1]], limit=15),
            "top_inclusive_gateway": top_frames(
                stacks, samples, lambda stack: sorted({f for f in stack if OURS.search(f)}),
                limit=20)}


def report(args: argparse.Namespace, deployment: Deployment, parts: Mapping[str, Any],
           load_before: float) -> dict[str, object]:
    lat = parts["latency"]
    return {
        "benchmark": NAME,
        "pair": f"POST /v1/markets/{MARKET}/orders (form side=1 amount=0.01 price=1000: a sell "
                "far above the market, it rests) then POST .../orders/{id}/_cancel",
        "servers": {
            "processes": "1 gateway + 1 simulator (uvloop each), Redis on loopback",
            "gateway": "expie-gateway serve, redis.url set: audit (backend redis), rate limits, "
                       "idempotency, ownership, kill switch and revocations in Redis; "
                       f"limits {HIGH_LIMIT}/1 s per user and per account, pacing rate 0",
            "redis_url": args.redis_url, "redis_key_prefix": deployment.prefix,
            "redis_cpu_measured": "redis" in deployment.watched,
            "simulator_activity_per_s": 0,
            "user": f"{USER} (scope orders:write, account {ACCOUNT})",
            "account_balance": deployment.balance,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_before": load_before,
                    "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "latency": lat,
        "saturation": parts["saturation"],
        "steps_us": parts["steps"],
        "breakdown": breakdown(parts["steps"], lat),
        "machinery": parts["machinery"],
        "profile": parts["profile"],
        "targets": {"added_p50_under_2ms_per_order": lat["target_met"]},
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp, \
            deploy(args, Path(tmp)) as deployment:
        parts: dict[str, Any] = {"latency": latency(deployment, args)}
        parts["saturation"] = saturation(deployment, args)
        parts["profile"] = profile_gateway(deployment, args)
        parts["machinery"] = machinery_check(deployment, args.redis_url)
        parts["steps"] = step_costs(deployment, args)
        return report(args, deployment, parts, load_before)


def targets_missed(result: dict[str, object]) -> bool:
    met: Any = result["targets"]
    return not all(all(calls.values()) for calls in met["added_p50_under_2ms_per_order"].values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate:
        return generate(args)
    return run_benchmark(NAME, lambda: run(args), targets_missed, args.check)


if __name__ == "__main__":
    sys.exit(main())
