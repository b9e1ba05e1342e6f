"""Schema-driven fuzzing of a live gateway from its own ``/openapi.json`` (schemathesis).

For every described operation, valid and invalid requests are generated (hypothesis, seeded and
derandomized, so a run is repeatable) and sent over real sockets. Each answer is held to three
rules: no 5xx (the simulator is healthy: nothing may fail on the gateway's side); every error
the gateway makes is its JSON error (or, on the token endpoint, the OAuth error) with the
request id; nothing the gateway refused reached the exchange (its request counters, read
from the simulator around each call, did not move). Problems are collected, not raised, so one
run reports them all.

``python -m tests.fuzzing [--examples N]`` (``make fuzz``) starts a simulator and a gateway
process on free loopback ports, runs a long fuzz and prints its counts as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# Calls the gateway makes on its own account, not on the caller's: the markets list it checks
# market names against.
OWN_UPSTREAM_CALLS = frozenset({"GET /v1/markets"})
OAUTH_PATHS = frozenset({"/auth/token"})
CALL_TIMEOUT = 10.0


@dataclass
class FuzzReport:
    cases: int = 0
    unsendable: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "unsendable": self.unsendable,
                "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
                "problems": len(self.problems), "first_problems": self.problems[:20]}


def upstream_counter(stats_url: str, control_token: str) -> Callable[[], int]:
    """Calls the simulator has served on the callers' behalf, read from its ``/_sim/stats``."""
    def count() -> int:
        request = urllib.request.Request(
            stats_url, headers={"Authorization": f"Bearer {control_token}"})
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as response:
            stats = json.loads(response.read())
        return sum(number for route, number in stats["rest_requests"].items()
                   if route not in OWN_UPSTREAM_CALLS)
    return count


def fuzz(base_url: str, token: str, upstream_calls: Callable[[], int], examples: int,
         seed: int = 0) -> FuzzReport:
    """Fuzz every operation of ``base_url``'s description with ``examples`` cases per mode."""
    document = requests.get(f"{base_url}/openapi.json", timeout=CALL_TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(document)
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, base_url, token, upstream_calls, examples, seed,
                            session, report)
    return report


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, token: str,
                    upstream_calls: Callable[[], int], examples: int, seed: int,
                    session: requests.Session, report: FuzzReport) -> None:
    @settings(max_examples=examples, database=None, deadline=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        headers = {"Authorization": f"Bearer {token}", **(case.headers or {})}
        before = upstream_calls()
        try:
            response = case.call(base_url=base_url, headers=headers, session=session,
                                 timeout=CALL_TIMEOUT)
        except (requests.RequestException, ValueError, UnicodeError):
            report.unsendable += 1  # the client library would not send it
            return
        forwarded = upstream_calls() > before
        report.cases += 1
        report.statuses[response.status_code] += 1
        problem = judge(operation.path, response, forwarded)
        if problem is not None:
            report.problems.append(f"{operation.method.upper()} {operation.path} "
                                   f"({mode.value}): {problem}")

    try:
        one()
    except Unsatisfiable:
        return  # nothing of this operation can be made invalid (it takes no input)


def judge(path: str, response: Any, forwarded: bool) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    if status >= 500:
        return f"{status}: {response.text[:200]!r}"
    if status < 400 or forwarded:
        return None  # a success, or the exchange's own answer passed through
    return _judge_error(path, response)


def _judge_error(path: str, response: Any) -> str | None:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        return f"{status} is not JSON: {response.text[:200]!r}"
    if path in OAUTH_PATHS and isinstance(body, dict) and isinstance(body.get("error"), str):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"code", "message", "request_id"} <= error.keys():
        return f"{status} is not the gateway's error: {response.text[:200]!r}"
    if error["request_id"] != _header(response, "x-request-id"):
        return f"{status}: the error's request id is not the X-Request-Id"
    return None


def _header(response: Any, name: str) -> str | None:
    """A header of schemathesis's response (its values are lists) or of a requests response."""
    value = {key.lower(): item for key, item in response.headers.items()}.get(name)
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


# --- make fuzz: a long run against processes ---------------------------------------------------


@contextlib.contextmanager
def _deployment(directory: Path) -> Iterator[tuple[str, str, Callable[[], int]]]:
    from bench.common import (  # noqa: PLC0415 - the process helpers the benchmarks use
        free_port,
        gateway_command,
        issue_token,
        running,
        simulator_accounts,
        simulator_command,
        simulator_control,
        write_gateway_config,
    )

    sim_port, port = free_port(), free_port()
    control = simulator_control()
    config = write_gateway_config(directory, port, sim_port)
    sim_base, base = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    account_token = simulator_accounts()[0][1]
    with running("simulator", simulator_command(sim_port, 0.0), f"{sim_base}/v1/markets",
                 {"Authorization": f"Bearer {account_token}"}), \
            running("gateway", gateway_command(config), f"{base}/healthz", {}):
        token = issue_token(config, "desk-admin",
                            "market:read orders:read orders:write balance:read admin")
        token_value = control["Authorization"].removeprefix("Bearer ")
        yield base, token, upstream_counter(f"{sim_base}/_sim/stats", token_value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fuzz a live gateway from its /openapi.json")
    parser.add_argument("--examples", type=int, default=200, help="cases per operation and mode")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="expie-fuzz-") as directory, \
            _deployment(Path(directory)) as (base, token, upstream_calls):
        report = fuzz(base, token, upstream_calls, args.examples, seed=0)
    print(json.dumps({**report.as_json(), "examples_per_operation_and_mode": args.examples,
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
