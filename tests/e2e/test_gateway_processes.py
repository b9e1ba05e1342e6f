"""Two ``expie-gateway serve`` processes sharing one Redis, in front of one simulator.

Replicas in separate OS processes share nothing but Redis: one upstream call serves a burst of
identical market-data requests spread over both, and a value fetched by one is a hit on the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.process_harness import cli, free_port, health, process_config, serving
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"


@pytest.fixture
async def replicas(
    sim: RunningSimulator, tmp_path: Path, redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[list[int], str]]:
    """Two serving processes (their ports) and a token both accept."""
    config = process_config(tmp_path, sim, redis={"url": redis_url, "key_prefix": key_prefix,
                                                  "require_persistence": False})
    ports = [free_port(), free_port()]
    with serving(config, ports[0]), serving(config, ports[1]):
        for port in ports:
            assert await asyncio.to_thread(health, port) == {"status": "ok"}
        issued = cli("token", "issue", "--config", config, "--user", "pricing-bot")
        assert issued.returncode == 0, issued.stderr
        yield ports, issued.stdout.strip()


async def ticker(http: aiohttp.ClientSession, port: int, token: str) -> tuple[int, str, bytes]:
    async with http.get(f"http://127.0.0.1:{port}{TICKER}",
                        headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, response.headers.get("X-Cache", ""), await response.read()


@pytest.mark.redis
async def test_two_processes_share_one_upstream_call(
    sim: RunningSimulator, replicas: tuple[list[int], str]
) -> None:
    ports, token = replicas
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            ticker(http, ports[i % 2], token) for i in range(100)))
        later = await ticker(http, ports[1], token)
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, _, body in answers}) == 1
    assert (await sim.stats())["rest_requests"][TICKER_ROUTE] == 1
    assert later[:2] == (200, "HIT")

