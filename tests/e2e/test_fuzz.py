"""A bounded schema-driven fuzz of a live gateway and simulator (``make fuzz`` runs a long one)."""

from __future__ import annotations

import asyncio

import pytest

from tests.fuzzing import fuzz, upstream_counter
from tests.gateway_harness import RunningGateway
from tests.simulator_harness import RunningSimulator

EXAMPLES = 25  # per operation and mode: enough to touch every parameter, bounded in time


@pytest.mark.timeout(240)
async def test_no_generated_request_gets_a_5xx_a_foreign_error_or_through_when_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = gw.token("desk-admin", ["market:read", "orders:read", "orders:write",
                                    "balance:read", "admin"])
    control = sim.control()["Authorization"].removeprefix("Bearer ")
    counter = upstream_counter(sim.url("/_sim/stats"), control)
    report = await asyncio.to_thread(fuzz, gw.url("").rstrip("/"), token, counter, EXAMPLES)
    assert report.problems == [], "\n".join(report.problems[:40])
    assert report.cases >= 100, report.as_json()
    assert any(status >= 400 for status in report.statuses), "nothing invalid was generated"
