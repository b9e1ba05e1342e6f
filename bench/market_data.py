"""Ticker GETs served from the gateway's warm cache, against a bare handler and the simulator.

Starts, one process each on free loopback ports: ``python -m simulator`` (uvloop, quiet market by
default), ``expie-gateway serve`` without Redis (the in-process cache), ``expie-gateway serve``
with Redis (the shared level in Redis behind the in-process level; left out when Redis does not
answer at ``--redis-url``), and ``bench/bare_server.py`` (one aiohttp handler returning a
constant body of the ticker's size). Every gateway request carries a gateway bearer token
(``expie-gateway token issue``, scope market:read), so authentication is included. The caches are
warmed (and checked to answer ``X-Cache: HIT`` with the exchange's bytes) before anything is
measured. Load comes from ``wrk`` (one thread); targets alternate round by round and the medians
of rounds are kept.

- Part A, ``-c50`` (``--connections``): the gateways against the bare handler (target: at least
  60 % of its throughput) and direct to the simulator.
- Part B: the simulator gets ``--latency-ms`` (5) of added latency (``POST /_sim/faults``); the
  gateways against the simulator directly at each of ``--concurrencies`` (target: at least 5x).

The gateway's cache keeps its default TTLs (ticker 1 s, in-process level 0.25 s): a "warm" cache
still refreshes from the exchange about once a second, and the upstream calls made during each
gateway run are counted (simulator ``/_sim/stats``) and reported. When the gateway misses the
60 % target and ``py-spy`` is installed, the gateway is sampled under the Part A load and the
shares of its CPU by area of the hit path are reported.

Prints one JSON object and writes ``bench/results/market_data.json``. Run from the repository
root: ``python -m bench.market_data``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    BenchError,
    Measured,
    Server,
    Summary,
    Target,
    bar_chart,
    bare_command,
    clean_environment,
    delete_prefixed,
    ensure_wrk,
    env_number,
    free_port,
    gateway_command,
    http_json,
    issue_token,
    load_parser,
    load_target,
    parse_collapsed,
    parsed_load,
    py_spy,
    record_profile,
    redis_answers,
    run_benchmark,
    run_wrk,
    running,
    simulator_accounts,
    simulator_command,
    simulator_control,
    top_frames,
    write_gateway_config,
    wrk_version,
)

NAME = "market_data"
MARKET = "BCCBTC"
PATH = f"/v1/markets/{MARKET}/ticker"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"
USER = "demo-trader"
TARGET_SHARE_OF_BARE = 0.60
TARGET_RATIO_OVER_DIRECT = 5.0
GATEWAYS = ("gateway", "gateway_redis")
# Areas of the gateway's hit path, most specific first: a stack counts in the first it matches.
AREAS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("token_verification",
     re.compile(r"gateway/auth/(tokens|authenticator)\.py|/jwt/|/cryptography/"),
     "Authenticator/TokenVerifier/PyJWT/cryptography frames"),
    ("market_check", re.compile(r"^MarketData\.(require_market|market_names) "),
     "the known-market check against the cached markets list"),
    ("cache_lookup", re.compile(r"\(gateway/(services|stores)/"),
     "MarketData.fetch: the in-process level, single flight, the shared level"),
    ("query_check", re.compile(r"^check_query "), "query-parameter validation"),
    ("response_building", re.compile(r"^serve_cached\.<locals>\.cached "),
     "the cached handler: web.Response with X-Cache/Age headers"),
    ("rest_of_guard", re.compile(r"\(gateway/web/"),
     "the route guard (request id, scope/market checks, error handling), the exchange handler"),
)
OUTSIDE = ("aiohttp_server_outside_handler",
           "request parsing, routing, writing the response, the event loop")
WHY_RATIO_DEPENDS_ON_CONCURRENCY = (
    "Going direct, each connection waits the added latency on every request, so direct "
    "throughput is at most connections / latency (c/5 ms = 200 req/s per connection) until the "
    "simulator's own CPU caps it; the gateway answers from memory, so its throughput is bounded "
    "by its own CPU per request and barely depends on the connection count. The ratio therefore "
    "shrinks as concurrency grows: large at low concurrency, and below 1 once direct throughput "
    "reaches the simulator's CPU limit, which is higher than the gateway's (the simulator does "
    "less per request).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = load_parser(__doc__.splitlines()[0], activity=0.0)
    parser.add_argument("--concurrencies", default="1,5,10,50",
                        help="Part B connection counts, comma-separated")
    parser.add_argument("--latency-ms", type=float, default=5.0,
                        help="Part B: latency added to every simulator REST call")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"),
                        help="Redis for the second gateway ('' leaves it out; env REDIS_URL)")
    parser.add_argument("--profile", type=float, default=env_number("BENCH_PROFILE", 10, 0, 60),
                        help="seconds of py-spy sampling when the 60%% target is missed, 0..60 "
                             "(0 or py-spy missing: skipped; env BENCH_PROFILE)")
    parser.add_argument("--always-profile", action="store_true",
                        help="sample the gateway even when the 60%% target is met")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the 60%% target or the 5x target at the lowest "
                             "concurrency is missed")
    args = parsed_load(parser, argv)
    args.profile = min(60.0, max(0.0, args.profile))
    args.concurrencies = sorted({max(1, int(c)) for c in args.concurrencies.split(",") if c})
    return args


# --- the deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    simulator: Server
    targets: dict[str, Target]  # gateway, gateway_redis (when Redis answers), bare, direct
    bodies: dict[str, object]
    redis_note: str | None


def get(url: str, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=dict(headers))
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read(), dict(response.headers)


def check_warm(name: str, server: Server, headers: Mapping[str, str], direct: bytes) -> str:
    """Fail unless ``server`` answers the exchange's bytes with ``X-Cache: HIT`` (bounded)."""
    seen = ""
    for _ in range(50):
        body, answer = get(server.url, headers)
        seen = answer.get("X-Cache", "")
        if body != direct:
            raise BenchError(f"{name} answered other bytes than the exchange: {body!r}")
        if seen == "HIT" and "Age" in answer:
            return seen
    raise BenchError(f"{name} never answered X-Cache: HIT (last: {seen!r})")


@contextlib.contextmanager
def deploy(args: argparse.Namespace, directory: Path) -> Iterator[Deployment]:
    sim_port, gw_port, gw_redis_port, bare_port = (free_port() for _ in range(4))
    upstream = {"Authorization": f"Bearer {simulator_accounts()[0][1]}"}
    redis_note = redis_answers(args.redis_url)
    prefix = f"bench:{uuid.uuid4().hex}:"
    configs = {"gateway": write_gateway_config(directory, gw_port, sim_port, name="gateway")}
    if redis_note is None:
        configs["gateway_redis"] = write_gateway_config(
            directory, gw_redis_port, sim_port, name="gateway-redis",
            extra={"redis": {"url": args.redis_url, "key_prefix": prefix,
                             "require_persistence": False}})  # a cache: any Redis will do
    ports = {"gateway": gw_port, "gateway_redis": gw_redis_port}
    bearer = {"Authorization": f"Bearer {issue_token(configs['gateway'], USER, 'market:read')}"}
    with contextlib.ExitStack() as stack:
        if redis_note is None:
            stack.callback(delete_prefixed, args.redis_url, prefix)
        simulator, direct_body = stack.enter_context(running(
            "simulator", simulator_command(sim_port, args.activity),
            f"http://{HOST}:{sim_port}{PATH}", upstream))
        targets: dict[str, Target] = {}
        bodies: dict[str, object] = {"direct_bytes": len(direct_body)}
        for name, config in configs.items():
            gateway, _ = stack.enter_context(running(
                name, gateway_command(config), f"http://{HOST}:{ports[name]}{PATH}", bearer,
                env=clean_environment()))
            bodies[f"{name}_x_cache_after_warmup"] = check_warm(name, gateway, bearer,
                                                                direct_body)
            bodies[f"{name}_identical_to_direct"] = True
            targets[name] = Target(gateway, bearer, watched=(simulator,))
        bare, _ = stack.enter_context(running(
            "bare", bare_command(bare_port, len(direct_body)), f"http://{HOST}:{bare_port}/", {}))
        targets["bare"] = Target(bare, {})
        targets["direct"] = Target(simulator, upstream)
        yield Deployment(simulator, targets, bodies, redis_note)


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Run:
    measured: Measured
    upstream_ticker_calls: int


def ticker_calls(simulator: Server) -> int:
    base = simulator.url.split("/v1/", 1)[0]
    stats = http_json(f"{base}/_sim/stats", simulator_control())
    return int(stats["rest_requests"].get(TICKER_ROUTE, 0))


def alternate_counting(
    wrk: str, deployment: Deployment, names: Sequence[str], *, args: argparse.Namespace,
    connections: int, label: str,
) -> dict[str, list[Run]]:
    """``bench.common.alternate``, also counting the simulator's ticker calls during each run."""
    def once(name: str, seconds: float) -> Run:
        before = ticker_calls(deployment.simulator)
        measured = load_target(wrk, deployment.targets[name], threads=args.threads,
                               connections=connections, duration=seconds)
        return Run(measured, ticker_calls(deployment.simulator) - before)

    for name in names:
        once(name, args.warmup)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            runs[name].append(once(name, args.duration))
            result = runs[name][-1].measured.result
            print(f"{label} round {number + 1} {name}: {result.requests_per_s} req/s, "
                  f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
                  f"{result.server_cpu_us_per_request} us CPU/request", file=sys.stderr)
    return runs


def summarize(runs: Sequence[Run], *, gateway: bool) -> dict[str, object]:
    summary = Summary.of([run.measured.result for run in runs])
    if summary.failures:
        raise BenchError("some requests failed (non-2xx or socket errors): figures would lie")
    wire = summary.to_wire()
    if gateway:
        requests = sum(run.measured.result.requests for run in runs)
        calls = sum(run.upstream_ticker_calls for run in runs)
        wire["upstream_ticker_calls"] = [run.upstream_ticker_calls for run in runs]
        wire["upstream_calls_per_request"] = round(calls / max(requests, 1), 6)
    return wire


def part_a(wrk: str, deployment: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    names = [name for name in (*GATEWAYS, "bare", "direct") if name in deployment.targets]
    runs = alternate_counting(wrk, deployment, names, args=args,
                              connections=args.connections, label="A")
    result: dict[str, Any] = {
        "connections": args.connections,
        **{name: summarize(runs[name], gateway=name in GATEWAYS) for name in names},
    }
    bare = result["bare"]
    for name in GATEWAYS:
        if name not in result:
            continue
        share = round(result[name]["requests_per_s"] / bare["requests_per_s"], 3)
        result[f"{name}_share_of_bare"] = share
        result[f"{name}_target_met"] = share >= TARGET_SHARE_OF_BARE
        cpu, bare_cpu = result[name]["server_cpu_us_per_request"], bare["server_cpu_us_per_request"]
        if cpu and bare_cpu:
            result[f"{name}_cpu_us_over_bare"] = round(cpu - bare_cpu, 1)
            result[f"{name}_cpu_share_of_bare"] = round(bare_cpu / cpu, 3)
        result[f"{name}_ratio_to_direct"] = round(
            result[name]["requests_per_s"] / result["direct"]["requests_per_s"], 3)
    result["target_share_of_bare"] = TARGET_SHARE_OF_BARE
    result["cpu_share_note"] = (
        "bare CPU per request / gateway CPU per request: the throughput share the gateway "
        "would reach with a core to itself; steadier than req/s when other processes load "
        "the machine (see machine.load_average)")
    return result


def part_b(wrk: str, deployment: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    simulator = deployment.simulator
    faults = f"{simulator.url.split('/v1/', 1)[0]}/_sim/faults"
    http_json(faults, simulator_control(), {"latency_ms": args.latency_ms})
    try:
        rows = [part_b_row(wrk, deployment, args, connections)
                for connections in args.concurrencies]
    finally:
        http_json(faults, simulator_control(), {"clear": True})
    return {
        "simulator_added_latency_ms": args.latency_ms,
        "target_ratio": TARGET_RATIO_OVER_DIRECT,
        "by_connections": rows,
        "direct_ceiling_note": "direct throughput cannot exceed connections / latency "
                               f"({1000 / args.latency_ms:g} req/s per connection)",
        "why_the_ratio_depends_on_concurrency": WHY_RATIO_DEPENDS_ON_CONCURRENCY,
    }


def part_b_row(
    wrk: str, deployment: Deployment, args: argparse.Namespace, connections: int
) -> dict[str, Any]:
    names = [name for name in (*GATEWAYS, "direct") if name in deployment.targets]
    runs = alternate_counting(wrk, deployment, names, args=args, connections=connections,
                              label=f"B c{connections}")
    row: dict[str, Any] = {
        "connections": connections,
        **{name: summarize(runs[name], gateway=name in GATEWAYS) for name in names},
        "direct_ceiling_req_per_s": round(connections * 1000 / args.latency_ms, 1),
    }
    for name in GATEWAYS:
        if name in row:
            ratio = round(row[name]["requests_per_s"] / row["direct"]["requests_per_s"], 2)
            row[f"{name}_ratio"] = ratio
            row[f"{name}_target_met"] = ratio >= TARGET_RATIO_OVER_DIRECT
    return row


# --- profile -------------------------------------------------------------------------------------


def profile_gateway(
    args: argparse.Namespace, wrk: str, deployment: Deployment, missed: bool
) -> dict[str, object]:
    """py-spy samples of the in-process gateway during one more Part A run (not measured)."""
    tool = py_spy()
    if not (missed or args.always_profile):
        return {"skipped": "the 60% target was met (--always-profile samples anyway)"}
    if tool is None or args.profile <= 0:
        return {"skipped": "py-spy is not installed (pip install py-spy)" if tool is None
                else "--profile 0"}
    target = deployment.targets["gateway"]
    collapsed, failure = record_profile(tool, target.server.process.pid, args.profile, lambda: (
        run_wrk(wrk, target.server.url, threads=args.threads, connections=args.connections,
                duration=args.profile + 1, headers=target.headers)))
    if collapsed is None:
        return {"skipped": failure}
    return summarize_stacks(collapsed)


def summarize_stacks(collapsed: str) -> dict[str, object]:
    """Shares of the gateway's CPU samples by area of the hit path, and the top frames."""
    stacks = parse_collapsed(collapsed)
    total = sum(stacks.values())
    if total == 0:
        return {"skipped": "py-spy recorded no samples"}
    areas = dict.fromkeys([name for name, _, _ in AREAS] + [OUTSIDE[0]], 0)
    for stack, count in stacks.items():
        areas[_area(stack)] += count
    return {
        "tool": "py-spy record --rate 200 (idle samples excluded), one wrk run as in Part A",
        "samples": total,
        "areas": {area: round(count / total, 4) for area, count in areas.items()},
        "areas_meaning": {name: meaning for name, _, meaning in AREAS} | {OUTSIDE[0]: OUTSIDE[1]},
        "top_self": top_frames(stacks, total, lambda stack: [stack[-1]], limit=20),
        "top_inclusive_gateway": top_frames(
            stacks, total, lambda stack: sorted({f for f in stack if "gateway/" in f}),
            limit=20),
        "top_inclusive_aiohttp": top_frames(
            stacks, total, lambda stack: sorted({f for f in stack if "(aiohttp/" in f}),
            limit=12),
    }


def _area(stack: Sequence[str]) -> str:
    for name, pattern, _ in AREAS:
        if any(pattern.search(frame) for frame in stack):
            return name
    return OUTSIDE[0]


# --- report --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, wrk: str, deployment: Deployment, parts: Mapping[str, Any],
    load_before: float,
) -> dict[str, object]:
    a, b = parts["a"], parts["b"]
    lowest = b["by_connections"][0]
    return {
        "benchmark": NAME,
        "request": f"GET {PATH}: through the gateway (gateway bearer token, scope market:read; "
                   "warm cache), a bare aiohttp constant handler (same body size), and direct "
                   "to the simulator (the account's token)",
        "bodies": deployment.bodies,
        "load_generator": {
            "tool": "wrk", "version": wrk_version(wrk), "threads": args.threads,
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
            "statistic": "median of rounds, targets alternated",
        },
        "servers": {
            "processes": "each target one process (uvloop), all on one machine with wrk",
            "gateway": "expie-gateway serve, no Redis: in-process cache (ticker_ttl 1 s, "
                       "local_ttl 0.25 s), EdDSA key",
            "gateway_redis": deployment.redis_note or "expie-gateway serve with redis.url: the "
                             "shared level in Redis behind the in-process level",
            "bare": "bench/bare_server.py: one aiohttp handler, constant body",
            "simulator_activity_per_s": args.activity,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_before": load_before, "load_average_1m_after": _load()},
        "part_a": a,
        "part_b": b,
        "targets": {
            "gateway_at_least_60pct_of_bare": a.get("gateway_target_met"),
            "gateway_redis_at_least_60pct_of_bare": a.get("gateway_redis_target_met"),
            "gateway_at_least_5x_direct_by_connections": {
                row["connections"]: row.get("gateway_target_met") for row in b["by_connections"]},
            "gateway_redis_at_least_5x_direct_by_connections": {
                row["connections"]: row.get("gateway_redis_target_met")
                for row in b["by_connections"]},
            "lowest_concurrency_5x_met": lowest.get("gateway_target_met"),
        },
        "profile": parts["profile"],
        "chart": draw(a),
    }


def draw(a: Mapping[str, Any]) -> str | None:
    bars = {name.replace("_", " "): a[name]["requests_per_s"]
            for name in (*GATEWAYS, "bare", "direct") if name in a}
    chart = bar_chart(NAME, f"GET ticker, warm cache (wrk -c{a['connections']})", bars,
                      "requests/s")
    return str(chart.relative_to(REPO)) if chart else None


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run(args: argparse.Namespace) -> dict[str, object]:
    wrk, load_before = ensure_wrk(), _load()
    with tempfile.TemporaryDirectory(prefix="bench-market-") as tmp, \
            deploy(args, Path(tmp)) as deployment:
        a = part_a(wrk, deployment, args)
        missed = not a["gateway_target_met"]
        profile = profile_gateway(args, wrk, deployment, missed)
        b = part_b(wrk, deployment, args)
        return report(args, wrk, deployment, {"a": a, "b": b, "profile": profile}, load_before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(NAME, lambda: run(args), targets_missed, args.check)


def targets_missed(result: dict[str, object]) -> bool:
    targets: Any = result["targets"]
    return not (targets["gateway_at_least_60pct_of_bare"] and targets["lowest_concurrency_5x_met"])


if __name__ == "__main__":
    sys.exit(main())
