"""The supervisor of ``serve --workers N``: its refusals, its backoff, its bound on the drain.

The backoff runs on a fake clock with real (instantly failing) child processes; the e2e tier
(tests/e2e/test_gateway_workers.py) runs the whole thing with real workers.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.settings import AuditSettings, RedisSettings, Settings
from gateway.supervisor import (
    MAX_BACKOFF,
    Supervisor,
    Worker,
    WorkersKilled,
    WorkersRefused,
    refuse_unshared,
)
from tests.clock import FakeClock

FAILING = [sys.executable, "-c", "raise SystemExit(3)"]


def with_workers(workers: int, *, redis: bool = True, audit: str = "auto") -> Settings:
    settings = Settings()
    return dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, workers=workers),
        redis=RedisSettings(url="redis://127.0.0.1:6379/0") if redis else RedisSettings(),
        audit=dataclasses.replace(AuditSettings(), backend=audit))


def test_one_worker_needs_nothing() -> None:
    refuse_unshared(with_workers(1, redis=False, audit="file"))


def test_several_workers_need_redis_and_no_audit_file() -> None:
    with pytest.raises(WorkersRefused, match=r"^server.workers 4 needs redis.url"):
        refuse_unshared(with_workers(4, redis=False))
    with pytest.raises(WorkersRefused, match=r"server.workers 2 cannot use audit.backend file"):
        refuse_unshared(with_workers(2, audit="file"))
    refuse_unshared(with_workers(2, audit="redis"))


def died(supervisor: Supervisor, worker: Worker) -> None:
    """Let ``worker``'s process exit, then let the supervisor see it."""
    assert worker.process is not None
    worker.process.wait(timeout=30)
    supervisor.look_after()  # one step of the loop, on the fake clock
    assert worker.process is None


def test_a_worker_failing_at_start_is_started_again_later_and_later() -> None:
    clock = FakeClock(1000.0)
    supervisor = Supervisor(FAILING, 1, 5.0, clock=clock)
    worker = supervisor.workers[0]
    supervisor.look_after()  # starts it (due at once)
    delays = []
    for _ in range(7):
        died(supervisor, worker)
        delay = worker.start_at - clock()
        delays.append(delay)
        clock.advance(delay / 2)
        supervisor.look_after()  # not yet
        assert worker.process is None
        clock.advance(delay / 2)
        supervisor.look_after()  # now
        assert worker.process is not None
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, MAX_BACKOFF, MAX_BACKOFF]
    # One that ran long enough before dying starts again at the first delay.
    clock.advance(31)
    died(supervisor, worker)
    assert worker.start_at - clock() == 0.5


def test_workers_still_running_at_the_bound_are_killed() -> None:
    # SIGTERM ignored by the parent is ignored by the child it starts (kept across exec).
    supervisor = Supervisor(["sleep", "60"], 2, 0.3)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        supervisor.look_after()  # starts both
    finally:
        signal.signal(signal.SIGTERM, previous)
    processes = [w.process for w in supervisor.workers]
    supervisor.received(signal.SIGTERM, None)  # as if received
    with pytest.raises(WorkersKilled, match=r"^2 worker\(s\) still running 0.3 s after"):
        supervisor.stop()
    for process in processes:
        assert isinstance(process, subprocess.Popen)
        assert process.returncode == -signal.SIGKILL


def test_a_worker_whose_stop_fails_makes_the_supervisor_exit_1(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    failing_stop = [sys.executable, "-c", "import pathlib, signal, sys, time; "
                    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); "
                    f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"]
    supervisor = Supervisor(failing_stop, 1, 30.0)
    supervisor.look_after()
    process = supervisor.workers[0].process
    assert isinstance(process, subprocess.Popen)
    for _ in range(200):  # bounded: until the child has its SIGTERM handler
        if ready.exists():
            break
        time.sleep(0.05)
    supervisor.received(signal.SIGTERM, None)
    assert supervisor.stop() == 1
    assert process.returncode == 3


def test_the_supervisor_imports_no_web_stack() -> None:
    code = ("import sys, gateway.cli, gateway.supervisor; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiohttp', 'gateway.app', 'uvloop') or m.startswith('gateway.web')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.strip() == "[]"
