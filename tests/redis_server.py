"""A ``redis-server`` of a test's own, on a free loopback port, for tests that kill or wipe it.

Never the shared server: this one lives in the test's directory, and is stopped (or killed with
SIGKILL, as a crash would) by its PID. ``persistent`` turns on AOF with ``appendfsync always``,
so a restart finds every write acknowledged before the kill.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.process_harness import free_port

START_WITHIN = 10.0


class OwnRedis:
    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port and directory) and wait until it answers."""
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                       else ["--appendonly", "no"])
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--daemonize", "no", "--loglevel", "warning",
             *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + START_WITHIN
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
            self._process.wait(timeout=START_WITHIN)
        self._process = None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=START_WITHIN)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=START_WITHIN)
        self._process = None


@contextlib.contextmanager
def own_redis(directory: Path, *, persistent: bool = True) -> Iterator[OwnRedis]:
    server = OwnRedis(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()
