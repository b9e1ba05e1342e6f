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
import yaml

from tests.process_harness import ROOT, cli, free_port, health, serving
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"


def replica_config(directory: Path, sim: RunningSimulator, redis_url: str, prefix: str) -> Path:
    key = directory / "k1.pem"
    done = cli("keys", "generate", "--kid", "k1", "--out", key)
    assert done.returncode == 0, done.stderr
    accounts = []
    for account in sim.config.accounts:
        (directory / account.name).write_text(account.token, encoding="utf-8")
        accounts.append({"name": account.name, "token_file": str(directory / account.name)})
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "upstream": {"base_url": sim.url("").rstrip("/"), "retries": 0},
        "auth": {"signing_key": "k1",
                 "keys": [{"kid": "k1", "algorithm": "EdDSA", "private_key_file": str(key)}]},
        "users": {"file": str(ROOT / "config" / "users.example.yaml")},
        "accounts": accounts,
        "redis": {"url": redis_url, "key_prefix": prefix},
    }), encoding="utf-8")
    return config


@pytest.fixture
async def replicas(
    sim: RunningSimulator, tmp_path: Path, redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[list[int], str]]:
    """Two serving processes (their ports) and a token both accept."""
    config = replica_config(tmp_path, sim, redis_url, key_prefix)
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

