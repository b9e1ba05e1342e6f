"""E2E-tier fixtures: a fake wall clock, the real Redis of the component tier, desk processes.

The Redis fixtures are the component tier's own (imported, so registered here too): a test that
needs Redis fails under ``CI=true`` when there is none and is skipped elsewhere, and every key
under its ``key_prefix`` is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.clock import FakeClock
from tests.component.conftest import key_prefix, redis_client, redis_relay, redis_url
from tests.desk_processes import DeskFactory
from tests.e2e.test_ws_fanout import Sockets
from tests.simulator_harness import RunningSimulator

__all__ = ["clock", "key_prefix", "redis_client", "redis_relay", "redis_url", "sockets",
           "start_desk"]


@pytest.fixture
def clock() -> FakeClock:
    """Starts on a whole second near the real time (Redis entries expire on a realistic scale)."""
    return FakeClock(float(int(time.time())))


@pytest.fixture
async def start_desk(
    sim: RunningSimulator, tmp_path: Path, redis_url: str, key_prefix: str
) -> AsyncIterator[DeskFactory]:
    """Builds a desk (config, tokens) on the real Redis; its processes are stopped after."""
    with contextlib.ExitStack() as stack:
        async with aiohttp.ClientSession() as http:
            yield DeskFactory(sim, tmp_path, redis_url, key_prefix, http, stack)


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    """Every WebSocket client of a test, on one session without a connection limit."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        opened = Sockets(session)
        yield opened
        await opened.close()
