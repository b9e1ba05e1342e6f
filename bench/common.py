"""Pieces every benchmark shares: free loopback ports, server subprocesses, wrk runs, results.

Servers run as subprocesses on 127.0.0.1 only and are stopped by their PID. Load comes from
``wrk``; its text output is parsed here and nowhere else. Results go to ``bench/results/``.
The deployment under test (simulator, gateway config and CLI, the bare baseline, a Redis key
prefix to check and clean up, or a ``redis-server`` of one's own), alternating rounds,
percentiles and ``py-spy`` sampling are shared here too; the chaos scenarios (``chaos/``) and the
tests' own Redis servers use the same pieces. Nothing here imports the gateway or the simulator:
they are driven through their command lines and their YAML files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
import yaml

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WRK_INSTALL = "apt-get install -y --no-install-recommends wrk"
SIM_CONFIG = REPO / "config" / "simulator.yaml"
USERS_FILE = REPO / "config" / "users.example.yaml"
CLI_TIMEOUT = 60.0
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, server that never answered, bad wrk output)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def env_number(name: str, default: float, low: float, high: float) -> float:
    """A number from the environment, clamped to ``[low, high]`` so runs stay bounded."""
    text = os.environ.get(name)
    value = float(text) if text else default
    return min(high, max(low, value))


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def wait_ready(server: Server, headers: Mapping[str, str], timeout: float = 30.0) -> bytes:
    """Poll ``server.url`` until it answers 200; return that body. Fails if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited: {server.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            request = urllib.request.Request(server.url, headers=dict(headers))
            with urllib.request.urlopen(request, timeout=2) as response:
                body: bytes = response.read()
                if response.status == 200:
                    return body
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not answer 200 on {server.url} within {timeout} s")


def stop(server: Server, timeout: float = 10.0) -> None:
    """SIGTERM the server's PID, then SIGKILL it if it has not exited within ``timeout``."""
    if server.process.poll() is not None:
        return
    os.kill(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running(
    name: str, command: Sequence[str], url: str, headers: Mapping[str, str],
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Server, bytes]]:
    """Start ``command`` (from the repository root), wait until ``url`` answers, stop it after.

    ``env`` replaces the environment of the command (default: this process's).
    """
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(list(command), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                   env=None if env is None else dict(env))
    server = Server(name, process, url, log)
    try:
        yield server, wait_ready(server, headers)
    finally:
        stop(server)
        log.unlink(missing_ok=True)


# --- the deployment under test: simulator, gateway, bare baseline ----------------------------


def simulator_command(port: int, activity: float, config: Path = SIM_CONFIG) -> list[str]:
    """``python -m simulator`` (uvloop, one process) on ``port``, ``activity`` events per second."""
    return [sys.executable, "-m", "simulator", "--host", HOST, "--port", str(port),
            "--config", str(config), "--activity", str(activity), "--seed", "1"]


def bare_command(port: int, size: int) -> list[str]:
    """``bench/bare_server.py``: one aiohttp handler answering a constant ``size``-byte body."""
    return [sys.executable, str(REPO / "bench" / "bare_server.py"), "--port", str(port),
            "--size", str(size)]


def simulator_yaml(config: Path = SIM_CONFIG) -> dict[str, Any]:
    loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise BenchError(f"{config}: expected a mapping")
    return loaded


def simulator_accounts(config: Path = SIM_CONFIG) -> list[tuple[str, str]]:
    """(name, token) of each exchange account in the simulator's config, in its order."""
    return [(str(a["name"]), str(a["token"])) for a in simulator_yaml(config)["accounts"]]


def simulator_control(config: Path = SIM_CONFIG) -> dict[str, str]:
    """The bearer header of the simulator's ``/_sim`` control API."""
    return {"Authorization": f"Bearer {simulator_yaml(config)['control_token']}"}


def clean_environment() -> dict[str, str]:
    """This environment without ``EXPIE_GW_*``: the generated config alone sets the gateway."""
    return {name: value for name, value in os.environ.items() if not name.startswith("EXPIE_GW_")}


def gateway_cli_run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``expie-gateway ARGS`` run to its end, whatever its exit status (stdout and stderr as
    text): for a command whose failure is an answer, as ``audit verify``'s is."""
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], cwd=REPO,
                          env=clean_environment(), capture_output=True, text=True, check=False,
                          timeout=CLI_TIMEOUT)


def gateway_cli(*args: str | Path) -> str:
    """``expie-gateway ARGS``; its stdout, or ``BenchError`` with its stderr."""
    done = gateway_cli_run(*args)
    if done.returncode != 0:
        raise BenchError(f"expie-gateway {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def gateway_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config)]


UNLIMITED = {"count": 100_000_000, "window": 1}


def audit_file(directory: Path, name: str) -> Path:
    """The audit file (used without Redis) of the config ``name`` written to ``directory``."""
    return directory / f"{name}-audit.jsonl"


def write_gateway_config(
    directory: Path, port: int, upstream_port: int, *, name: str = "gateway",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A gateway config for this run: a fresh key, the simulator accounts' tokens in files,
    ``config/users.example.yaml``, no Redis, the audit file (used without Redis) in
    ``directory`` rather than the repository, so gateways of different runs never share its
    lock, and per-user read limits far above any load here (a benchmark measures what a request
    costs, not how fast one user is refused); ``extra`` adds or replaces top-level sections
    (``{"redis": {...}}``). Written to ``directory/<name>.yaml``; the key and token files are
    shared by every config written to ``directory``."""
    key = directory / "bench-key.pem"
    if not key.exists():
        gateway_cli("keys", "generate", "--kid", "bench-key", "--out", key)
    accounts = []
    for account, token in simulator_accounts():
        token_file = directory / f"account-{account}"
        token_file.write_text(token, encoding="utf-8")
        token_file.chmod(0o600)
        accounts.append({"name": account, "token_file": str(token_file)})
    config = directory / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": HOST, "port": port},
        "upstream": {"base_url": f"http://{HOST}:{upstream_port}"},
        "auth": {"signing_key": "bench-key", "keys": [
            {"kid": "bench-key", "algorithm": "EdDSA", "private_key_file": str(key)}]},
        "users": {"file": str(USERS_FILE)},
        "accounts": accounts,
        "logging": {"level": "WARNING", "format": "text"},  # read back by the benchmarks
        "audit": {"file": str(audit_file(directory, name))},
        "orders": {"limits": {"read": UNLIMITED, "market_data": UNLIMITED}},
        **(extra or {}),
    }), encoding="utf-8")
    return config


def issue_token(config: Path, user: str, scope: str, ttl: str = "2h") -> str:
    """A gateway bearer token from ``expie-gateway token issue``."""
    return gateway_cli("token", "issue", "--config", config, "--user", user,
                       "--scope", scope, "--ttl", ttl).strip()


def http_json(
    url: str, headers: Mapping[str, str], body: object = None, timeout: float = 10.0
) -> Any:
    """GET ``url`` (POST ``body`` as JSON when given) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        **headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{url}: {exc}") from exc


# --- Redis -----------------------------------------------------------------------------------


def redis_answers(url: str) -> str | None:
    """None when Redis answers PING at ``url``, else why not."""
    if not url:
        return "the Redis URL is empty"
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis does not answer at {url}: {exc}"
    return None


def delete_prefixed(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN, then DEL): what one run left behind."""
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)


class RedisServer:
    """A ``redis-server`` of the caller's own on a free loopback port, living in ``directory``:
    for a test or a chaos scenario that kills, restarts or wipes it, never the shared server.

    Stopped (or killed with SIGKILL, as a crash would be) by its PID. ``persistent`` turns on AOF
    with ``appendfsync always``, so a restart on the same port and directory finds every write
    acknowledged before the kill; ``wipe`` between the two makes it come back empty instead.
    """

    START_WITHIN = 10.0
    # What Redis keeps in its directory: the append-only files (a directory since Redis 7, one
    # file before) and a snapshot (none is taken here: ``--save ""``, but a wipe leaves none).
    DATA = ("appendonlydir", "appendonly.aof", "dump.rdb")

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port and directory) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (apt-get install redis-server)")
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                       else ["--appendonly", "no"])
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory),
             "--save", "", "--daemonize", "no", "--loglevel", "warning", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + self.START_WITHIN
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is written on the way out."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=self.START_WITHIN)
        self._process = None

    def wipe(self) -> None:
        """Delete the data Redis keeps in its directory, so the next ``start`` finds nothing:
        a Redis restarted without its data. Only while it is not running."""
        if self._process is not None and self._process.poll() is None:
            raise BenchError("wipe a redis-server that runs: kill or stop it first")
        for name in self.DATA:
            path = self.directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.START_WITHIN)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=self.START_WITHIN)
        self._process = None


def redis_server_pid(url: str) -> int | None:
    """The PID of the Redis server at ``url`` when it runs on this machine and its ``/proc``
    entry is readable (for ``cpu_seconds``); None otherwise."""
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            pid = int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    local = HOST in url or "localhost" in url
    return pid if local and os.access(f"/proc/{pid}/stat", os.R_OK) else None


# --- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    server_cpu_us_per_request: float | None = None


def ensure_wrk() -> str:
    """The path of ``wrk``; installs it with apt-get when running as root, else explains how."""
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"wrk is missing: running {WRK_INSTALL}", file=sys.stderr)
        for command in ("apt-get update -qq", WRK_INSTALL):
            subprocess.run(command.split(), check=False, capture_output=True, timeout=600)
        path = shutil.which("wrk")
    if path is None:
        raise BenchError(f"wrk is not installed; install it with: sudo {WRK_INSTALL}")
    return path


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False,
                          timeout=10)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def run_wrk(
    wrk: str, url: str, *, threads: int, connections: int, duration: float,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency"]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def load_server(
    wrk: str, server: Server, *, threads: int, connections: int, duration: float,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    """``run_wrk`` against ``server``, adding the server's CPU time per request.

    CPU time per request stays steady when other processes compete for the cores, where
    requests per second do not: it is the figure to trust on a busy machine.
    """
    before = cpu_seconds(server.process.pid)
    result = run_wrk(wrk, server.url, threads=threads, connections=connections,
                     duration=duration, headers=headers)
    spent = cpu_seconds(server.process.pid) - before
    per_request = round(spent / result.requests * 1e6, 1) if result.requests else None
    return dataclasses.replace(result, server_cpu_us_per_request=per_request)


@dataclass(frozen=True)
class Target:
    """What one wrk run loads: ``server`` with ``headers``; ``watched`` processes' CPU is kept."""

    server: Server
    headers: Mapping[str, str]
    watched: tuple[Server, ...] = ()


@dataclass(frozen=True)
class Measured:
    result: WrkResult
    # CPU microseconds per request of each ``Target.watched`` process, by server name.
    watched_cpu_us_per_request: Mapping[str, float]


def load_target(wrk: str, target: Target, *, threads: int, connections: int,
                duration: float) -> Measured:
    """``load_server`` on ``target``, plus the CPU per request of its watched processes."""
    before = {server.name: cpu_seconds(server.process.pid) for server in target.watched}
    result = load_server(wrk, target.server, threads=threads, connections=connections,
                         duration=duration, headers=target.headers)
    watched = {
        server.name: round((cpu_seconds(server.process.pid) - before[server.name])
                           / max(result.requests, 1) * 1e6, 1)
        for server in target.watched
    }
    return Measured(result, watched)


def alternate(
    wrk: str, targets: Mapping[str, Target], *, threads: int, connections: int,
    duration: float, warmup: float, rounds: int,
) -> dict[str, list[Measured]]:
    """Warm each target up, then load them in turn for ``rounds`` rounds, the order reversed
    every other round so that neither always runs first (the same load for each)."""
    def once(name: str, seconds: float) -> Measured:
        return load_target(wrk, targets[name], threads=threads, connections=connections,
                           duration=seconds)

    for name in targets:
        once(name, warmup)
    results: dict[str, list[Measured]] = {name: [] for name in targets}
    order = list(targets)
    for number in range(rounds):
        for name in order if number % 2 == 0 else order[::-1]:
            results[name].append(once(name, duration))
            print(f"round {number + 1} {name}: {results[name][-1]}", file=sys.stderr)
    return results


def alternate_runs(
    names: Sequence[str], rounds: int, run: Callable[[str], T]
) -> dict[str, list[T]]:
    """``run(name)`` for every name, ``rounds`` times, the order reversed every other round so
    that none always runs first (``alternate`` without wrk); the results by name, in round order."""
    results: dict[str, list[T]] = {name: [] for name in names}
    order = list(names)
    for number in range(rounds):
        for name in order if number % 2 == 0 else order[::-1]:
            results[name].append(run(name))
    return results


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank ``percent`` percentile of ``values`` (not empty)."""
    if not values:
        raise BenchError("a percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(percent / 100 * len(ordered))))
    return ordered[rank - 1]


def parse_wrk(text: str) -> WrkResult:
    """Requests/sec, the 50% and 99% latencies, and the error counts of ``wrk --latency``."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rate is None or total is None:
        raise BenchError(f"unexpected wrk output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        text)
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=_percentile(text, "50"),
        p99_ms=_percentile(text, "99"),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def _percentile(text: str, percent: str) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    if found is None:
        raise BenchError(f"no {percent}% latency in wrk output (was --latency given?)")
    return round(float(found.group(1)) * _UNITS[found.group(2)], 3)


@dataclass(frozen=True)
class Summary:
    """Medians over rounds, with every round kept for the record."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    failures: int
    rounds: tuple[WrkResult, ...]

    @classmethod
    def of(cls, rounds: Sequence[WrkResult]) -> Summary:
        return cls(
            requests_per_s=round(statistics.median(r.requests_per_s for r in rounds), 1),
            p50_ms=round(statistics.median(r.p50_ms for r in rounds), 3),
            p99_ms=round(statistics.median(r.p99_ms for r in rounds), 3),
            cpu_us_per_request=_median_or_none([r.server_cpu_us_per_request for r in rounds]),
            failures=sum(r.non_2xx + r.socket_errors for r in rounds),
            rounds=tuple(rounds),
        )

    def to_wire(self) -> dict[str, object]:
        return {"requests_per_s": self.requests_per_s, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "server_cpu_us_per_request": self.cpu_us_per_request,
                "failed_requests": self.failures,
                "rounds": [asdict(r) for r in self.rounds]}


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 1) if known else None


# --- py-spy ----------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The ``py-spy`` beside this interpreter or on PATH (it is not a dependency)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_profile(
    tool: str, pid: int, seconds: float, during: Callable[[], object]
) -> tuple[str | None, str]:
    """``py-spy record`` (raw collapsed stacks, 200 Hz, idle samples left out) of ``pid`` for
    ``seconds`` while ``during()`` runs (the load: it should last a little longer).

    Returns (the collapsed stacks, "") or (None, why py-spy failed).
    """
    with tempfile.NamedTemporaryFile(prefix="bench-py-spy-", suffix=".txt") as out:
        command = [tool, "record", "--pid", str(pid), "--rate", "200",
                   "--duration", str(int(seconds)), "--format", "raw", "--output", out.name]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            during()
            _, errors = sampler.communicate(timeout=seconds + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait(10)
        if sampler.returncode != 0:
            return None, f"py-spy failed: {errors.decode(errors='replace').strip()[-300:]}"
        return Path(out.name).read_text(encoding="utf-8"), ""


def parse_collapsed(collapsed: str) -> dict[tuple[str, ...], int]:
    """py-spy's collapsed stacks as (frames, outermost first) -> samples."""
    stacks: dict[tuple[str, ...], int] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(frame_name(f) for f in stack.split(";"))] += int(count)
    return stacks


def frame_name(frame: str) -> str:
    """``function (path:line)`` as ``function (path)``, the path from site-packages or the repo."""
    function, _, place = frame.partition(" (")
    path = place.rstrip(")").rpartition(":")[0] or place.rstrip(")")
    path = path.split("site-packages/")[-1].replace(f"{REPO}/", "")
    return f"{function} ({path})"


def top_frames(
    stacks: Mapping[tuple[str, ...], int], total: int,
    keys: Callable[[tuple[str, ...]], Sequence[str]], limit: int = 12,
) -> list[dict[str, object]]:
    """The ``limit`` keys (frames) with the largest shares of ``total`` samples."""
    counts: Counter[str] = Counter()
    for stack, count in stacks.items():
        for key in keys(stack):
            counts[key] += count
    return [{"frame": frame, "share": round(count / total, 4)}
            for frame, count in counts.most_common(limit)]


# --- results ---------------------------------------------------------------------------------


def write_result(name: str, result: Mapping[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def bar_chart(name: str, title: str, bars: Mapping[str, float], unit: str) -> Path | None:
    """A PNG bar chart in ``bench/results/`` when matplotlib is importable; ``None`` otherwise."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    figure, axes = pyplot.subplots(figsize=(5, 3.5))
    axes.bar(list(bars), list(bars.values()), color=["#4472c4", "#a5a5a5"][: len(bars)])
    axes.set_ylabel(unit)
    axes.set_title(title)
    path = RESULTS / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def load_parser(description: str, *, activity: float) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: wrk's load and the simulator's activity."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float,
                        default=env_number("BENCH_DURATION", 10, 1, 60),
                        help="seconds per wrk run, 1..60 (env BENCH_DURATION)")
    parser.add_argument("--rounds", type=int, default=int(env_number("BENCH_ROUNDS", 3, 1, 9)),
                        help="alternating rounds per target, 1..9 (env BENCH_ROUNDS)")
    parser.add_argument("--warmup", type=float, default=env_number("BENCH_WARMUP", 2, 1, 10))
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--activity", type=float, default=activity,
                        help="simulator market activity, events per second (0: quiet)")
    return parser


def parsed_load(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.duration = min(60.0, max(1.0, args.duration))
    args.rounds = min(9, max(1, args.rounds))
    return args


def run_benchmark(
    name: str, run: Callable[[], dict[str, object]], missed: Callable[[dict[str, object]], bool],
    check: bool,
) -> int:
    """Run, write and print the result; 2 when it could not be measured, 1 when ``check`` and
    ``missed(result)``."""
    try:
        result = run()
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    write_result(name, result)
    print(json.dumps(result, indent=2))
    return 1 if check and missed(result) else 0


# --- process and machine figures (/proc) -----------------------------------------------------


TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` has open."""
    found = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def tcp_inodes(port: int, state: str) -> set[int]:
    """Inodes of the IPv4 TCP sockets whose local port is ``port``, in ``state``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == state:
            found.add(int(fields[9]))
    return found


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far, all cores (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores the machine kept busy between two ``machine_jiffies`` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return round(busy / total * (os.cpu_count() or 1), 3) if total else 0.0


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


def raise_fd_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; the new soft limit."""
    import resource  # noqa: PLC0415 - Unix only, and only the processes holding many sockets

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
