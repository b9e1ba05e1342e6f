"""``expie-gateway serve --workers N``: one port, N supervised processes, every store in Redis.

Real processes on loopback. The workers' pids come from the supervisor's log lines; which process
holds which socket comes from /proc (a worker's file descriptors against the kernel's TCP table),
so nothing is added to the API for these tests. Linux only, as the image is: without /proc they
fail rather than skip. Every wait is bounded; nothing asserts a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from bench.common import TCP_ESTABLISHED, TCP_LISTEN, socket_inodes, tcp_inodes
from tests.process_harness import cli, free_port, health, logged, process_config, serving
from tests.simulator_harness import RunningSimulator

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
CONNECTIONS = 32  # kept open at once: SO_REUSEPORT spreads them by their 4-tuple's hash
WAIT = 20.0
T = TypeVar("T")


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def started(self) -> list[tuple[int, int]]:
        """(slot, pid) of every worker start the supervisor logged, in order."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [(int(slot), int(pid)) for slot, pid in STARTED.findall(text)]

    def live_pids(self) -> dict[int, int]:
        """slot: pid of each worker's latest start."""
        return dict(self.started())


async def eventually(probe: Callable[[], T | None], what: str, budget: float = WAIT) -> T:
    """``probe()`` once it is neither None nor empty (polled every 0.1 s), else a failure."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if value := probe():
            return value
        await asyncio.sleep(0.1)
    pytest.fail(f"gave up waiting: {what}")


def listening(pids: dict[int, int], port: int) -> bool:
    """Every pid of ``pids`` holds a listening socket of ``port``."""
    sockets = tcp_inodes(port, TCP_LISTEN)
    return all(socket_inodes(pid) & sockets for pid in pids.values())


@contextlib.contextmanager
def stopped_at_exit(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGTERM (the workers drain, the port is let go) before ``serving`` kills what is left."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=WAIT)


@pytest.fixture
def redis_config(sim: RunningSimulator, tmp_path: Path, redis_url: str, key_prefix: str) -> Path:
    return process_config(tmp_path, sim, redis={"url": redis_url, "key_prefix": key_prefix,
                                                "require_persistence": False})


@pytest.fixture
async def supervised(redis_config: Path, tmp_path: Path) -> AsyncIterator[Supervised]:
    """``serve --workers 2`` on the shared Redis, both workers listening."""
    port, log = free_port(), tmp_path / "serve.log"
    with serving(redis_config, port, args=["--workers", "2"], log=log) as process, \
            stopped_at_exit(process):
        running = Supervised(process, port, log)
        pids = await eventually(lambda: len(running.live_pids()) == 2 and running.live_pids(),
                                "two workers started")
        await eventually(lambda: listening(pids, port), "both workers listening")
        assert await asyncio.to_thread(health, port) == {"status": "ok"}
        yield running


async def hold_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections, each answered 200 on ``/healthz`` and left open."""
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), WAIT)
        assert status.startswith(b"HTTP/1.1 200"), status
        writers.append(writer)
    return writers


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_two_workers_share_one_port_and_both_answer(supervised: Supervised) -> None:
    pids = supervised.live_pids()
    assert len(set(pids.values())) == 2
    assert supervised.process.pid not in pids.values()
    writers = await hold_connections(supervised.port, CONNECTIONS)
    try:
        accepted = tcp_inodes(supervised.port, TCP_ESTABLISHED)
        served = {slot: len(socket_inodes(pid) & accepted) for slot, pid in pids.items()}
    finally:
        for writer in writers:
            writer.close()
    assert sum(served.values()) == CONNECTIONS, served
    assert all(served.values()), f"a worker accepted no connection: {served}"
    # The supervisor itself serves nothing.
    assert not socket_inodes(supervised.process.pid) & (accepted | tcp_inodes(
        supervised.port, TCP_LISTEN))


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_a_killed_worker_is_started_again_and_the_port_keeps_answering(
    supervised: Supervised
) -> None:
    before = supervised.live_pids()
    os.kill(before[1], signal.SIGKILL)
    # The other worker answers meanwhile.
    for _ in range(10):
        assert await asyncio.to_thread(health, supervised.port) == {"status": "ok"}
    after = await eventually(
        lambda: (pids := supervised.live_pids())[1] != before[1] and pids,
        "worker 1 started again")
    assert after[2] == before[2]
    assert len(supervised.started()) == 3
    assert f"worker 1 (pid {before[1]}) was killed by SIGKILL" in supervised.log.read_text()
    await eventually(lambda: listening(after, supervised.port), "the new worker listening")
    assert await asyncio.to_thread(health, supervised.port) == {"status": "ok"}
    assert supervised.process.poll() is None


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_sigterm_on_the_supervisor_drains_every_worker_and_exits_0(
    supervised: Supervised
) -> None:
    pids = supervised.live_pids()
    supervised.process.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(supervised.process.wait, WAIT)
    log = supervised.log.read_text()
    assert status == 0, log
    for pid in pids.values():
        assert logged(log, "draining", worker=pid)
        assert logged(log, "stopped", worker=pid)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "every worker has stopped" in log
    assert not tcp_inodes(supervised.port, TCP_LISTEN)


def test_workers_without_redis_are_refused(sim: RunningSimulator, tmp_path: Path) -> None:
    config = process_config(tmp_path, sim)
    by_flag = cli("serve", "--config", config, "--workers", "2")
    by_setting = cli("serve", "--config", config, env={"EXPIE_GW_SERVER__WORKERS": "3"})
    for done, count in ((by_flag, 2), (by_setting, 3)):
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"expie-gateway: server.workers {count} needs redis.url")
        assert "started" not in done.stderr


@pytest.mark.parametrize("flag", ["0", "65", "two"])
def test_a_worker_count_out_of_range_is_a_usage_error(tmp_path: Path, flag: str) -> None:
    done = cli("serve", "--config", tmp_path / "none.yaml", "--workers", flag)
    assert done.returncode == 2
    assert "--workers" in done.stderr
    assert "from 1 to 64" in done.stderr


@pytest.mark.redis
def test_a_port_in_use_is_refused_before_any_worker_starts(redis_config: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--config", redis_config, "--workers", "2",
                   env={"EXPIE_GW_SERVER__HOST": "127.0.0.1",
                        "EXPIE_GW_SERVER__PORT": str(port)})
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"expie-gateway: cannot listen on 127.0.0.1:{port}: the address is in use")


def exited(pid: int) -> bool:
    """``pid`` is gone, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_workers_whose_supervisor_is_killed_drain_on_their_own(
    supervised: Supervised
) -> None:
    pids = supervised.live_pids()
    supervised.process.kill()
    await asyncio.to_thread(supervised.process.wait, WAIT)
    await eventually(lambda: all(exited(pid) for pid in pids.values()), "the workers exited")
    log = supervised.log.read_text()
    for pid in pids.values():
        assert logged(log, f"the supervisor (pid {supervised.process.pid}) is gone", worker=pid)
        assert logged(log, "stopped", worker=pid)
