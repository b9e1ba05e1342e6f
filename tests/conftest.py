"""Fixtures shared by every tier: a simulator running on a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from simulator.app import create_app
from tests.gateway_harness import RunningGateway, start_gateway
from tests.simulator_harness import TEST_PUSH_INTERVAL, RunningSimulator, load_test_config

StartSimulator = Callable[..., Awaitable[RunningSimulator]]
StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start simulators (keywords ``push_interval``, ``activity``, ``seed``); stopped after."""
    running: list[RunningSimulator] = []

    async def start(
        *, push_interval: float = TEST_PUSH_INTERVAL, activity: float = 0.0, seed: int = 7
    ) -> RunningSimulator:
        config = load_test_config(push_interval)
        server = TestServer(create_app(config, seed=seed, activity=activity), host="127.0.0.1")
        await server.start_server()
        simulator = RunningSimulator(server, config, aiohttp.ClientSession())
        running.append(simulator)
        return simulator

    yield start
    for simulator in running:
        await simulator.http.close()
        await simulator.server.close()


@pytest.fixture
async def sim(start_simulator: StartSimulator) -> RunningSimulator:
    """A quiet simulator (no background activity) with a fast push interval."""
    return await start_simulator()


@pytest.fixture
async def start_gateway_for() -> AsyncIterator[StartGateway]:
    """Start gateways in front of a simulator (keywords as ``start_gateway``); stopped after."""
    running: list[RunningGateway] = []

    async def start(simulator: RunningSimulator, **options: Any) -> RunningGateway:
        gateway = await start_gateway(simulator, **options)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        await gateway.http.close()
        await gateway.server.close()


@pytest.fixture
async def gw(sim: RunningSimulator, start_gateway_for: StartGateway) -> RunningGateway:
    """A gateway with in-process stores in front of the quiet simulator ``sim``."""
    return await start_gateway_for(sim)
