"""``serve --workers N``: N gateway processes on one port, supervised by this one.

The supervisor checks that ``server.host:server.port`` can be had, lets it go, and starts N
workers (``python -m gateway serve ... --worker-of PID``); each opens the port with
``SO_REUSEPORT``, so the kernel spreads new connections over their sockets. A worker that dies
is started again after a backoff (0.5 s doubling to 10 s; back to 0.5 s once one ran 30 s).
SIGTERM or SIGINT is forwarded to every worker (each drains as ``gateway.server`` describes; a
second signal is forwarded too); the supervisor exits once all have exited (0, or 1 when a
worker's own stop failed), or kills those still running after ``drain_delay + shutdown_timeout
+ STOP_MARGIN`` and exits 1.

The workers share the stores only through Redis, hence ``redis.url`` is required. What each
process keeps to itself (pacing, read limits, the in-process cache level, the upstream WebSocket
subscriptions) is per worker: a pod with N workers is N replicas for those. This module imports
no web stack: the supervisor only starts, watches and signals processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gateway.errors import GatewayError
from gateway.listening import check_can_listen
from gateway.settings import Settings

logger = logging.getLogger("gateway.supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TICK = 0.1                # seconds between looks at the workers
FIRST_BACKOFF = 0.5       # seconds before a dead worker is started again
MAX_BACKOFF = 10.0
HEALTHY_RUN = 30.0        # a worker that ran this long before dying starts again at FIRST_BACKOFF
STOP_MARGIN = 7.0         # beyond drain_delay + shutdown_timeout: the audit spool's 5 s, and 2


class WorkersRefused(GatewayError):
    """``server.workers`` above 1 with settings that would split state between the workers."""

    code = "workers_refused"


class WorkersKilled(GatewayError):
    """Workers still running when the drain's bound ran out were killed."""

    code = "workers_killed"


def refuse_unshared(settings: Settings) -> None:
    """``WorkersRefused`` when several workers would keep state apart (in-process stores)."""
    workers = settings.server.workers
    if workers <= 1:
        return
    if settings.redis.url is None:
        raise WorkersRefused(
            f"server.workers {workers} needs redis.url: without Redis each worker would keep its "
            "own revocations, rate limits, idempotency keys and kill switches")
    if not settings.audit_in_redis:
        raise WorkersRefused(
            f"server.workers {workers} cannot use audit.backend file: the workers would write "
            "one file at once (use redis, or auto)")


def worker_command(config: Path, supervisor: int) -> list[str]:
    """The command of one worker: ``serve`` with the same config (and the same environment)."""
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--worker-of", str(supervisor)]


def supervise(settings: Settings, config: Path) -> int:
    """Run ``settings.server.workers`` workers until a signal stops them; the exit status."""
    refuse_unshared(settings)
    server = settings.server
    check_can_listen(server.host, server.port)
    stop_within = server.drain_delay + server.shutdown_timeout + STOP_MARGIN
    supervisor = Supervisor(worker_command(config, os.getpid()), server.workers, stop_within)
    return supervisor.run()


@dataclass
class Worker:
    slot: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0          # deaths in a row, each soon after its start
    start_at: float = 0.0      # when to start it again (while ``process`` is None)


class Supervisor:
    def __init__(self, command: Sequence[str], count: int, stop_within: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._command = list(command)
        self.workers = [Worker(slot) for slot in range(1, count + 1)]
        self._stop_within = stop_within
        self._clock = clock
        self._signals: list[int] = []

    def run(self) -> int:
        previous = {number: signal.signal(number, self.received) for number in SIGNALS}
        try:
            for worker in self.workers:
                self._start(worker)
            while not self._signals:
                self.look_after()
                time.sleep(TICK)
            return self.stop()
        finally:
            self._kill_all()
            for number, handler in previous.items():
                signal.signal(number, handler)

    def received(self, number: int, _frame: FrameType | None) -> None:
        self._signals.append(number)

    def _start(self, worker: Worker) -> None:
        # Its own process group: a Ctrl-C reaches the supervisor only, which forwards it once.
        worker.process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL,
                                          process_group=0)
        worker.started = self._clock()
        logger.info("worker %d started (pid %d)", worker.slot, worker.process.pid)

    def look_after(self) -> None:
        """Note the workers that died and start again those whose backoff is over."""
        now = self._clock()
        for worker in self.workers:
            if worker.process is None:
                if now >= worker.start_at:
                    self._start(worker)
                continue
            status = worker.process.poll()
            if status is None:
                continue
            ran = now - worker.started
            if ran >= HEALTHY_RUN:
                worker.failures = 0
            delay = min(FIRST_BACKOFF * 2 ** worker.failures, MAX_BACKOFF)
            worker.failures += 1
            worker.start_at = now + delay
            logger.warning("worker %d (pid %d) %s after %.1f s: starting it again in %g s",
                           worker.slot, worker.process.pid, describe(status), ran, delay)
            worker.process = None

    def stop(self) -> int:
        """Forward every signal to the live workers until all exited, or kill them at the bound."""
        logger.info("%s: stopping %d workers (each drains)",
                    signal.Signals(self._signals[0]).name, len(self._running()))
        deadline = self._clock() + self._stop_within
        forwarded = 0
        failed = 0  # workers whose own drain ended in an error: the pod's exit says so
        while True:
            while forwarded < len(self._signals):
                for worker in self._running():
                    assert worker.process is not None
                    worker.process.send_signal(self._signals[forwarded])
                forwarded += 1
            for worker in self._running():
                assert worker.process is not None
                if (status := worker.process.poll()) is not None:
                    logger.info("worker %d (pid %d) %s", worker.slot, worker.process.pid,
                                describe(status))
                    failed += status != 0
                    worker.process = None
            if not self._running():
                if failed:
                    logger.error("every worker has stopped, %d of them with an error", failed)
                    return 1
                logger.info("every worker has stopped")
                return 0
            if self._clock() >= deadline:
                break
            time.sleep(TICK)
        pids = [worker.process.pid for worker in self._running() if worker.process is not None]
        self._kill_all()
        raise WorkersKilled(f"{len(pids)} worker(s) still running {self._stop_within:g} s after "
                            f"the signal were killed (pid {', '.join(map(str, pids))})")

    def _running(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.process is not None]

    def _kill_all(self) -> None:
        for worker in self._running():
            assert worker.process is not None
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait()
            worker.process = None


def describe(status: int) -> str:
    """``exited with 3`` or ``was killed by SIGKILL``."""
    if status >= 0:
        return f"exited with {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    return f"was killed by {name}"
