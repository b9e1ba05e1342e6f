"""``python -m chaos --short`` end to end: every scenario holds and nothing is placed twice but
what the README says a state loss does (a retry of a key the loss took is a new request).

The run starts its own processes on loopback (its own ``redis-server`` with AOF, the simulator,
each scenario's gateway replicas) and stops them by PID; this test runs it as a subprocess and
reads its JSON lines, one per scenario of ``chaos.registry``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chaos.registry import SCENARIOS
from tests.process_harness import ROOT, cli_environment

RUN_WITHIN = 150.0  # bounds the run (it takes about 30 s); it measures nothing


@pytest.mark.redis
@pytest.mark.timeout(RUN_WITHIN + 30)
def test_every_chaos_scenario_holds_in_its_short_version() -> None:
    done = subprocess.run([sys.executable, "-m", "chaos", "--short"], cwd=ROOT,
                          env=cli_environment(), capture_output=True, text=True,
                          timeout=RUN_WITHIN, check=False)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [line["scenario"] for line in lines] == list(SCENARIOS), done.stderr[-5000:]
    failed = [line for line in lines if line["ok"] is not True]
    assert not failed, f"{failed}\n{done.stderr[-5000:]}"
    assert [line["duplicated"] for line in lines] == [
        line.get("documented_duplicates", 0) for line in lines]
    assert done.returncode == 0
