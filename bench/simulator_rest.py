"""Ticker throughput of the simulator's REST API against a bare aiohttp handler, in one run.

Starts ``python -m simulator`` (uvloop, one process, live book from ``--activity``) and
``bench/bare_server.py`` (a constant body of the same size) on free loopback ports, warms both
up, then runs ``wrk`` against each in alternating rounds and keeps the medians. Prints one JSON
object and writes it to ``bench/results/simulator_rest.json`` (plus a PNG when matplotlib is
importable). Run from the repository root: ``python -m bench.simulator_rest``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

from bench.common import (
    HOST,
    REPO,
    BenchError,
    Server,
    Summary,
    WrkResult,
    bar_chart,
    bare_command,
    ensure_wrk,
    free_port,
    load_parser,
    load_server,
    parsed_load,
    run_benchmark,
    running,
    simulator_command,
    wrk_version,
)
from simulator.config import load_config

NAME = "simulator_rest"
TARGET_RATIO = 0.60
MARKET = "BCCBTC"
CONFIG = Path("config/simulator.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = load_parser(__doc__.splitlines()[0], activity=20.0)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the target ratio is not met")
    args = parsed_load(parser, argv)
    return args


def measure(
    wrk: str, targets: Mapping[str, tuple[Server, dict[str, str]]], args: argparse.Namespace,
) -> dict[str, list[WrkResult]]:
    """Warm each target up, then alternate them for ``args.rounds`` rounds."""
    def once(name: str, duration: float) -> WrkResult:
        server, headers = targets[name]
        return load_server(wrk, server, threads=args.threads, connections=args.connections,
                           duration=duration, headers=headers)

    for name in targets:
        once(name, args.warmup)
    results: dict[str, list[WrkResult]] = {name: [] for name in targets}
    order = list(targets)
    for round_number in range(args.rounds):
        for name in order if round_number % 2 == 0 else order[::-1]:
            results[name].append(once(name, args.duration))
            print(f"round {round_number + 1} {name}: {results[name][-1]}", file=sys.stderr)
    return results


def report(
    args: argparse.Namespace, wrk: str, body_size: int, results: Mapping[str, list[WrkResult]],
    load_before: float,
) -> dict[str, object]:
    simulator, bare = Summary.of(results["simulator"]), Summary.of(results["bare"])
    if simulator.failures or bare.failures:
        raise BenchError("some requests failed (non-2xx or socket errors): figures would lie")
    ratio = round(simulator.requests_per_s / bare.requests_per_s, 3)
    cpu_ratio = (round(bare.cpu_us_per_request / simulator.cpu_us_per_request, 3)
                 if bare.cpu_us_per_request and simulator.cpu_us_per_request else None)
    return {
        "benchmark": NAME,
        "request": f"GET /v1/markets/{MARKET}/ticker (bearer token), body {body_size} bytes",
        "load_generator": {
            "tool": "wrk", "version": wrk_version(wrk), "threads": args.threads,
            "connections": args.connections, "duration_s": args.duration,
            "warmup_s": args.warmup, "rounds": args.rounds, "statistic": "median of rounds",
        },
        "servers": {"processes": 1, "event_loop": "uvloop", "host": HOST,
                    "simulator_activity_per_s": args.activity},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_before": load_before, "load_average_1m_after": _load()},
        "simulator": simulator.to_wire(),
        "bare": bare.to_wire(),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "cpu_ratio": cpu_ratio,
        "cpu_ratio_note": "bare/simulator server CPU per request: the throughput ratio the "
                          "simulator would reach with a core to itself; steadier than req/s "
                          "when other processes load the machine (see load_average)",
        "chart": draw(simulator, bare),
    }


def draw(simulator: Summary, bare: Summary) -> str | None:
    bars = {"simulator": simulator.requests_per_s, "bare aiohttp": bare.requests_per_s}
    chart = bar_chart(NAME, "GET ticker on loopback (wrk)", bars, "requests/s")
    return str(chart.relative_to(REPO)) if chart else None


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run(args: argparse.Namespace) -> dict[str, object]:
    wrk, load_before = ensure_wrk(), _load()
    token = load_config(REPO / CONFIG).accounts[0].token
    auth = {"Authorization": f"Bearer {token}"}
    sim_port, bare_port = free_port(), free_port()
    sim_url = f"http://{HOST}:{sim_port}/v1/markets/{MARKET}/ticker"
    with running("simulator", simulator_command(sim_port, args.activity), sim_url,
                 auth) as (simulator, body):
        bare_url = f"http://{HOST}:{bare_port}/"
        with running("bare", bare_command(bare_port, len(body)), bare_url, {}) as (bare, _):
            targets = {"simulator": (simulator, auth), "bare": (bare, {})}
            results = measure(wrk, targets, args)
    return report(args, wrk, len(body), results, load_before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(NAME, lambda: run(args), lambda result: not result["target_met"],
                         args.check)


if __name__ == "__main__":
    sys.exit(main())
