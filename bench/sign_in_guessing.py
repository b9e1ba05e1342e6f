"""Guessing client secrets at ``POST /auth/token`` must not slow everyone else.

Starts ``python -m simulator`` and ``expie-gateway serve`` on free loopback ports and measures
``GET /healthz`` latency (one request after another on a fresh connection each, as a kubelet
probes) three ways in one run: idle; while ``--guessers`` concurrent clients post wrong secrets
for random client ids as fast as they are answered, with the default sign-in backoff (one
address: they are soon told to wait); and the same with the backoff out of reach
(``free_failures`` in the millions: guesses from many addresses), where only the bound on
concurrent secret checks (``auth.sign_in.secret_checks``) stands between scrypt and the event
loop. For each: healthz p50/p99, guesses answered per second, and their statuses.

Prints one JSON object and writes ``bench/results/sign_in_guessing.json``. Run from the
repository root: ``python -m bench.sign_in_guessing``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    HOST,
    free_port,
    gateway_command,
    percentile,
    running,
    simulator_accounts,
    simulator_command,
    write_gateway_config,
    write_result,
)

NAME = "sign_in_guessing"


async def probe_latencies(base: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            started = time.perf_counter()
            async with http.get(f"{base}/healthz") as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    return latencies


async def guess_until(base: str, stop: asyncio.Event, statuses: Counter[int]) -> None:
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            client = f"guess-{secrets.token_hex(4)}"
            credentials = base64.b64encode(f"{client}:{secrets.token_hex(12)}".encode()).decode()
            async with http.post(f"{base}/auth/token", data={"grant_type": "client_credentials"},
                                 headers={"Authorization": f"Basic {credentials}"}) as response:
                await response.read()
                statuses[response.status] += 1


async def scenario(base: str, guessers: int, seconds: float) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    load = [asyncio.create_task(guess_until(base, stop, statuses)) for _ in range(guessers)]
    await asyncio.sleep(0.5 if guessers else 0)
    started = time.monotonic()
    latencies = await probe_latencies(base, seconds)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*load)
    return {"guessers": guessers,
            "healthz_ms": {"p50": round(percentile(latencies, 50), 2),
                           "p99": round(percentile(latencies, 99), 2),
                           "probes": len(latencies)},
            "guesses_per_s": round(sum(statuses.values()) / elapsed, 1),
            "guess_statuses": {str(status): count for status, count in sorted(statuses.items())}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    token = simulator_accounts()[0][1]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sign-in-") as directory:
        sim_port = free_port()
        with running("simulator", simulator_command(sim_port, 0.0),
                     f"http://{HOST}:{sim_port}/v1/markets",
                     {"Authorization": f"Bearer {token}"}):
            for name, sign_in in (("default_backoff", {}),
                                  ("backoff_out_of_reach", {"free_failures": 10_000_000})):
                port = free_port()
                config = write_gateway_config(Path(directory), port, sim_port, name=name,
                                              extra={"auth": _auth(directory, sign_in)})
                base = f"http://{HOST}:{port}"
                with running(name, gateway_command(config), f"{base}/healthz", {}):
                    results[name] = {
                        "idle": asyncio.run(scenario(base, 0, args.seconds)),
                        "guessing": asyncio.run(scenario(base, args.guessers, args.seconds))}
    return {"benchmark": NAME, "what": __doc__.split("\n\n")[1].replace("\n", " "),
            "machine": {"cpus": os.cpu_count(), "load_average_1m_after": os.getloadavg()[0]},
            "seconds_per_scenario": args.seconds, "results": results}


def _auth(directory: str, sign_in: dict[str, Any]) -> dict[str, Any]:
    return {"signing_key": "bench-key", "sign_in": sign_in, "keys": [
        {"kid": "bench-key", "algorithm": "EdDSA",
         "private_key_file": str(Path(directory) / "bench-key.pem")}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guessers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    result = run(parser.parse_args(argv))
    write_result(NAME, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
