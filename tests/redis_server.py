"""A ``redis-server`` of a test's own, on a free loopback port, for tests that kill or wipe it.

Never the shared server: this one lives in the test's directory, and is stopped (or killed with
SIGKILL, as a crash would) by its PID. ``persistent`` turns on AOF with ``appendfsync always``,
so a restart finds every write acknowledged before the kill. The server itself is
``bench.common.RedisServer``, which the chaos scenarios run too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import RedisServer as OwnRedis

__all__ = ["OwnRedis", "own_redis"]


@contextlib.contextmanager
def own_redis(directory: Path, *, persistent: bool = True) -> Iterator[OwnRedis]:
    server = OwnRedis(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()
