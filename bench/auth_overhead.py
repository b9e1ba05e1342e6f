"""What the gateway adds to a proxied call: through it versus direct to the simulator.

The call is ``GET /v1/markets/BCCBTC/orders/_pending``: market data (the ticker) is served from
the gateway's cache, so an uncached, account-scoped read is what still costs a proxy hop.

Starts ``python -m simulator`` (uvloop, quiet market by default) and ``expie-gateway serve`` (a
config written to a tmp dir: a key from ``expie-gateway keys generate``, the simulator accounts'
tokens in files, ``config/users.example.yaml``, no Redis), one process each on free loopback
ports, gets a bearer token from ``expie-gateway token issue``, then runs ``wrk`` (the parameters
of ``bench.simulator_rest``) against the gateway and the simulator in alternating rounds and keeps
the medians: requests/s, p50/p99, the throughput ratio, the latency added, and the CPU time per
request of each process. A third target, a bare aiohttp proxy (one handler, the gateway's client
settings, no authentication; ``--no-bare-proxy`` leaves it out), separates what any aiohttp
proxy hop costs from what the gateway adds to it.

Token verification is timed in this process on the same key and token (the authenticator as a
request calls it, on a warm verification cache, and the full signature check, cold) and set
against the gateway's measured CPU per request: the share must stay under 10 %. When ``py-spy``
is installed (it is not a dependency: ``pip install py-spy``), the gateway is also sampled under
load and the share of its CPU samples in token verification frames is reported, with the
functions that dominate.

Prints one JSON object and writes ``bench/results/auth_overhead.json``. Run from the repository
root: ``python -m bench.auth_overhead``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    SIM_CONFIG,
    BenchError,
    Measured,
    Server,
    Summary,
    Target,
    alternate,
    bar_chart,
    clean_environment,
    ensure_wrk,
    env_number,
    free_port,
    gateway_cli,
    load_parser,
    parse_collapsed,
    parsed_load,
    py_spy,
    record_profile,
    run_benchmark,
    run_wrk,
    running,
    simulator_command,
    top_frames,
    write_gateway_config,
    wrk_version,
)
from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import load_keyring
from gateway.auth.tokens import TokenVerifier
from gateway.auth.users import load_users
from gateway.settings import Settings, load_settings
from gateway.stores.revocation import MemoryRevocationStore
from simulator.config import load_config

NAME = "auth_overhead"
MARKET = "BCCBTC"
PATH = f"/v1/markets/{MARKET}/orders/_pending"
USER = "demo-trader"
TARGET_SHARE = 0.10
# Frames that are token verification: our token code and the libraries it calls.
AUTH_FRAMES = re.compile(r"gateway/auth/(tokens|authenticator)\.py|/jwt/|/cryptography/")
HANDLER_FRAMES = re.compile(r"^protected\.<locals>\.protected_handler ")
UPSTREAM_FRAMES = re.compile(r"^UpstreamClient\.send ")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = load_parser(__doc__.splitlines()[0], activity=0.0)
    parser.add_argument("--profile", type=float, default=env_number("BENCH_PROFILE", 10, 0, 60),
                        help="seconds of py-spy sampling of the gateway under load, 0..60 "
                             "(0 or py-spy missing: skipped; env BENCH_PROFILE)")
    parser.add_argument("--light-duration", type=float,
                        default=env_number("BENCH_LIGHT_DURATION", 5, 0, 30),
                        help="seconds per run at one connection, for the latency a lone request "
                             "sees, 0..30 (0: skipped; env BENCH_LIGHT_DURATION)")
    parser.add_argument("--no-bare-proxy", dest="bare_proxy", action="store_false",
                        help="leave out the bare aiohttp proxy baseline")
    parser.add_argument("--serve-bare-proxy", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when verification costs 10%% or more of the gateway's CPU")
    args = parsed_load(parser, argv)
    args.profile = min(60.0, max(0.0, args.profile))
    args.light_duration = min(30.0, max(0.0, args.light_duration))
    return args


# --- the deployment under test ---------------------------------------------------------------


def bare_proxy_command(port: int, upstream_port: int, token_file: Path) -> list[str]:
    return [sys.executable, "-m", "bench.auth_overhead", "--serve-bare-proxy", str(port),
            "--upstream", f"http://{HOST}:{upstream_port}", "--token-file", str(token_file)]


def serve_bare_proxy(port: int, upstream: str, token: str) -> None:
    """The baseline: the same GET forwarded with the account's token, as ``UpstreamClient`` does
    (same pool, timeouts and headers), without authentication, request ids or route table."""
    import uvloop  # noqa: PLC0415 - only this mode runs a server
    from aiohttp import ClientSession, ClientTimeout, TCPConnector, web  # noqa: PLC0415
    from yarl import URL  # noqa: PLC0415

    sessions: list[ClientSession] = []
    headers = {"Authorization": f"Bearer {token}"}

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        sessions.append(ClientSession(
            connector=TCPConnector(limit=100, keepalive_timeout=30, ttl_dns_cache=300),
            timeout=ClientTimeout(total=10, connect=2), auto_decompress=False,
            skip_auto_headers=("User-Agent",)))
        yield
        await sessions[0].close()

    async def forward(request: web.Request) -> web.Response:
        url = URL(upstream + request.path, encoded=True)
        async with sessions[0].request("GET", url, headers=headers) as answer:
            response = web.Response(status=answer.status, body=await answer.read())
            response.headers["Content-Type"] = answer.content_type
            return response

    app = web.Application()
    app.cleanup_ctx.append(lifetime)
    app.router.add_get("/v1/markets/{market}/orders/_pending", forward)
    web.run_app(app, host=HOST, port=port, access_log=None, loop=uvloop.new_event_loop(),
                print=lambda _text: None)


# --- load ------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, wrk: str, directory: Path) -> dict[str, Any]:
    sim_port, gw_port, bare_port = free_port(), free_port(), free_port()
    config = write_gateway_config(directory, gw_port, sim_port)
    token = gateway_cli("token", "issue", "--config", config, "--user", USER,
                        "--scope", "orders:read", "--ttl", "2h").strip()
    bearer = {"Authorization": f"Bearer {token}"}
    upstream = {"Authorization": f"Bearer {load_config(SIM_CONFIG).accounts[0].token}"}
    sim_url, gw_url = f"http://{HOST}:{sim_port}{PATH}", f"http://{HOST}:{gw_port}{PATH}"
    gateway_command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    with contextlib.ExitStack() as stack:
        simulator, direct_body = stack.enter_context(running(
            "simulator", simulator_command(sim_port, args.activity), sim_url, upstream))
        gateway, proxied_body = stack.enter_context(running(
            "gateway", gateway_command, gw_url, bearer, env=clean_environment()))
        targets = {"gateway": Target(gateway, bearer, watched=(simulator,)),
                   "direct": Target(simulator, upstream)}
        if args.bare_proxy:
            command = bare_proxy_command(bare_port, sim_port, directory / "account-desk-alpha")
            bare, _ = stack.enter_context(running(
                "bare_proxy", command, f"http://{HOST}:{bare_port}{PATH}", {}))
            targets["bare_proxy"] = Target(bare, {}, watched=(simulator,))
        results = alternate(wrk, targets, threads=args.threads, connections=args.connections,
                            duration=args.duration, warmup=args.warmup, rounds=args.rounds)
        light = (alternate(wrk, targets, threads=1, connections=1, duration=args.light_duration,
                           warmup=1, rounds=args.rounds) if args.light_duration else None)
        profile = profile_gateway(args, wrk, gateway, bearer)
    return {"results": results, "light": light, "profile": profile, "config": config,
            "token": token,
            "bodies": (len(direct_body), len(proxied_body), direct_body == proxied_body)}


# --- token verification, timed in process -------------------------------------------------------


def verification_cost(config: Path, token: str) -> dict[str, float]:
    """Microseconds of CPU per call: ``authenticate`` (what a request runs) on a warm cache,
    ``verify`` alone warm, and ``verify`` cold (signature, base64, JSON, claims: no cache)."""
    settings = load_settings(config, environ={})
    header = f"Bearer {token}"
    warm = _authenticator(settings, cache_size=settings.auth.verify_cache_size)
    cold = _authenticator(settings, cache_size=0)
    return {
        "authenticate_warm_us": _cpu_per_call(lambda: warm.authenticate(header), 20_000),
        "verify_warm_us": _cpu_per_call(lambda: warm.verify(token), 20_000),
        "verify_cold_us": _cpu_per_call(lambda: cold.verify(token), 2_000),
    }


def _authenticator(settings: Settings, cache_size: int) -> Authenticator:
    auth = settings.auth
    verifier = TokenVerifier(load_keyring(auth), auth.issuer, auth.audience, auth.leeway,
                             time.time, None, cache_size)
    accounts = [account.name for account in settings.accounts]
    return Authenticator(verifier, MemoryRevocationStore(), load_users(settings.users_file,
                                                                       accounts))


def _cpu_per_call(call: Callable[[], Coroutine[Any, Any, object]], calls: int) -> float:
    """Median over 5 repeats of the process CPU time of ``calls`` awaited calls, per call."""
    async def repeat() -> float:
        await call()  # the first call fills the cache when there is one
        started = time.process_time()
        for _ in range(calls):
            await call()
        return (time.process_time() - started) / calls * 1e6

    return round(statistics.median(asyncio.run(repeat()) for _ in range(5)), 2)


# --- py-spy --------------------------------------------------------------------------------------


def profile_gateway(
    args: argparse.Namespace, wrk: str, gateway: Server, headers: Mapping[str, str]
) -> dict[str, object]:
    """py-spy samples of the gateway during one more wrk run (not one of the measured ones)."""
    tool = py_spy()
    if tool is None or args.profile <= 0:
        return {"skipped": "py-spy is not installed (pip install py-spy)" if tool is None
                else "--profile 0"}
    collapsed, failure = record_profile(tool, gateway.process.pid, args.profile, lambda: run_wrk(
        wrk, gateway.url, threads=args.threads, connections=args.connections,
        duration=args.profile + 1, headers=headers))
    if collapsed is None:
        return {"skipped": failure}
    return summarize_stacks(collapsed)


def summarize_stacks(collapsed: str) -> dict[str, object]:
    """Shares of the samples (py-spy leaves out idle ones, so: of the CPU time)."""
    stacks = parse_collapsed(collapsed)
    total = sum(stacks.values())
    if total == 0:
        return {"skipped": "py-spy recorded no samples"}
    areas = _areas(stacks)
    return {
        "tool": "py-spy record --rate 200 (idle samples excluded)",
        "samples": total,
        "token_verification_share": round(areas["token_verification"] / total, 4),
        "token_verification_frames": AUTH_FRAMES.pattern,
        "areas": {area: round(count / total, 4) for area, count in areas.items()},
        "areas_meaning": {
            "upstream_call": "UpstreamClient.send: the aiohttp client, its socket writes",
            "token_verification": "Authenticator/TokenVerifier/PyJWT/cryptography frames",
            "rest_of_handler": "the rest of the route guard and the proxy handler",
            "aiohttp_server_outside_handler": "request parsing, routing, writing the response",
        },
        "top_self": top_frames(stacks, total, lambda stack: [stack[-1]]),
        "top_inclusive_gateway": top_frames(
            stacks, total, lambda stack: sorted({f for f in stack if "gateway/" in f})),
    }


def _areas(stacks: Mapping[tuple[str, ...], int]) -> dict[str, int]:
    """Samples per area; a stack counts in the first area, in this order, it has a frame of."""
    areas = dict.fromkeys(("token_verification", "upstream_call", "rest_of_handler",
                           "aiohttp_server_outside_handler"), 0)
    for stack, count in stacks.items():
        if any(AUTH_FRAMES.search(frame) for frame in stack):
            areas["token_verification"] += count
        elif any(UPSTREAM_FRAMES.search(frame) for frame in stack):
            areas["upstream_call"] += count
        elif any(HANDLER_FRAMES.search(frame) for frame in stack):
            areas["rest_of_handler"] += count
        else:
            areas["aiohttp_server_outside_handler"] += count
    return areas


# --- report --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, wrk: str, measured: Mapping[str, Any],
    cost: Mapping[str, float], load_before: float,
) -> dict[str, object]:
    runs: Mapping[str, list[Measured]] = measured["results"]
    gateway = Summary.of([m.result for m in runs["gateway"]])
    direct = Summary.of([m.result for m in runs["direct"]])
    if gateway.failures or direct.failures:
        raise BenchError("some requests failed (non-2xx or socket errors): figures would lie")
    upstream_cpu = _upstream_cpu(runs["gateway"])
    direct_size, proxied_size, same_body = measured["bodies"]
    return {
        "benchmark": NAME,
        "request": f"GET {PATH}: through the gateway (gateway bearer token, scope orders:read) "
                   f"versus direct to the simulator (the account's token)",
        "bodies": {"direct_bytes": direct_size, "proxied_bytes": proxied_size,
                   "identical": same_body},
        "load_generator": {
            "tool": "wrk", "version": wrk_version(wrk), "threads": args.threads,
            "connections": args.connections, "duration_s": args.duration,
            "warmup_s": args.warmup, "rounds": args.rounds,
            "statistic": "median of rounds, targets alternated",
        },
        "servers": {"processes": "1 gateway + 1 simulator", "event_loop": "uvloop", "host": HOST,
                    "simulator_activity_per_s": args.activity,
                    "gateway": "expie-gateway serve, no Redis (in-process stores), EdDSA key"},
        "machine": _machine(load_before),
        "gateway": {**gateway.to_wire(), "upstream_cpu_us_per_request": upstream_cpu},
        "direct": direct.to_wire(),
        "ratio": round(gateway.requests_per_s / direct.requests_per_s, 3),
        "added_p50_ms": round(gateway.p50_ms - direct.p50_ms, 3),
        "added_p99_ms": round(gateway.p99_ms - direct.p99_ms, 3),
        "added_cpu_us_per_request": _added_cpu(gateway, direct, upstream_cpu),
        "added_latency_note": "wrk keeps every connection busy, so under this load latency is "
                              "connections / throughput: the added p50 is mostly queueing; "
                              "one_connection shows what a lone request sees",
        "one_connection": light_report(measured["light"]),
        "bare_proxy": bare_proxy_report(runs.get("bare_proxy"), gateway),
        "token_verification": verification_report(cost, gateway.cpu_us_per_request),
        "profile": measured["profile"],
        "chart": draw(gateway, direct),
    }


def light_report(runs: Mapping[str, Sequence[Measured]] | None) -> dict[str, object]:
    """p50/p99 with one connection (wrk -t1 -c1), medians of rounds, and what the hop adds."""
    if runs is None:
        return {"skipped": "--light-duration 0"}
    summaries = {name: Summary.of([m.result for m in measured])
                 for name, measured in runs.items()}
    gateway, direct = summaries["gateway"], summaries["direct"]
    return {
        **{name: {"requests_per_s": one.requests_per_s, "p50_ms": one.p50_ms, "p99_ms": one.p99_ms,
                  "failed_requests": one.failures} for name, one in summaries.items()},
        "added_p50_ms": round(gateway.p50_ms - direct.p50_ms, 3),
        "added_p99_ms": round(gateway.p99_ms - direct.p99_ms, 3),
    }


def _upstream_cpu(runs: Sequence[Measured]) -> float:
    """The simulator's CPU per request while it served a proxy (median of rounds)."""
    return round(statistics.median(m.watched_cpu_us_per_request["simulator"] for m in runs), 1)


def bare_proxy_report(runs: Sequence[Measured] | None, gateway: Summary) -> dict[str, object]:
    if not runs:
        return {"skipped": "--no-bare-proxy"}
    bare = Summary.of([m.result for m in runs])
    if bare.failures:
        raise BenchError("some requests to the bare proxy failed: figures would lie")
    added = (round(gateway.cpu_us_per_request - bare.cpu_us_per_request, 1)
             if gateway.cpu_us_per_request and bare.cpu_us_per_request else None)
    return {
        "what": "aiohttp server + one ClientSession (the gateway's client settings), GET "
                "the call forwarded with the account token: no auth, no request id, one route",
        **bare.to_wire(),
        "upstream_cpu_us_per_request": _upstream_cpu(runs),
        "gateway_cpu_us_per_request_over_bare_proxy": added,
        "gateway_ratio_to_bare_proxy": round(gateway.requests_per_s / bare.requests_per_s, 3),
    }


def _added_cpu(gateway: Summary, direct: Summary, upstream_cpu: float) -> float | None:
    """Gateway CPU plus the simulator's, per proxied request, minus the simulator's alone."""
    if gateway.cpu_us_per_request is None or direct.cpu_us_per_request is None:
        return None
    return round(gateway.cpu_us_per_request + upstream_cpu - direct.cpu_us_per_request, 1)


def verification_report(cost: Mapping[str, float], gateway_cpu: float | None) -> dict[str, object]:
    if not gateway_cpu:
        raise BenchError("no gateway CPU time per request was measured")
    warm_share = round(cost["authenticate_warm_us"] / gateway_cpu, 4)
    return {
        "method": "CPU time of N awaited calls in this process (median of 5 repeats), same key "
                  "and token as the load, divided by the gateway's measured CPU per request",
        **cost,
        "gateway_cpu_us_per_request": gateway_cpu,
        "share_of_gateway_cpu": warm_share,
        "share_of_gateway_cpu_if_every_request_had_a_new_token": round(
            cost["verify_cold_us"] / gateway_cpu, 4),
        "target_share": TARGET_SHARE,
        "target_met": warm_share < TARGET_SHARE,
    }


def _machine(load_before: float) -> dict[str, object]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_before": load_before, "load_average_1m_after": _load()}


def draw(gateway: Summary, direct: Summary) -> str | None:
    bars = {"via gateway": gateway.requests_per_s, "direct": direct.requests_per_s}
    chart = bar_chart(NAME, "GET orders/_pending on loopback (wrk)", bars, "requests/s")
    return str(chart.relative_to(REPO)) if chart else None


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run(args: argparse.Namespace) -> dict[str, object]:
    wrk, load_before = ensure_wrk(), _load()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        measured = measure(args, wrk, Path(tmp))
        cost = verification_cost(measured["config"], measured["token"])
    return report(args, wrk, measured, cost, load_before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare_proxy is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
        serve_bare_proxy(args.serve_bare_proxy, args.upstream, token)
        return 0
    return run_benchmark(NAME, lambda: run(args), verification_missed, args.check)


def verification_missed(result: dict[str, object]) -> bool:
    verification = result["token_verification"]
    return not (isinstance(verification, dict) and verification["target_met"])


if __name__ == "__main__":
    sys.exit(main())
