"""``expie-gateway demo`` (what ``make demo`` runs) as a newcomer meets it.

It runs in a copy of ``config/`` in a tmp dir, so its audit file and kill-switch state stay there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.process_harness import ROOT, RUN_TIMEOUT, cli_environment, free_port


@contextlib.contextmanager
def demo(directory: Path, port: int, sim_port: int) -> Iterator[subprocess.Popen[str]]:
    shutil.copytree(ROOT / "config", directory / "config", dirs_exist_ok=True)
    environ = {**cli_environment(), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--sim-port",
         str(sim_port)], cwd=directory, env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=RUN_TIMEOUT)


def banner(process: subprocess.Popen[str]) -> list[str]:
    """The banner's lines, up to its last one (the demo prints it once both are serving)."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if "stops both" in line:
            return lines
    raise AssertionError(f"the demo ended before its banner: {lines}")


def test_the_demo_serves_the_token_it_prints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    with demo(tmp_path, port, sim_port) as process:
        lines = banner(process)
        intro = next(index for index, line in enumerate(lines) if line.startswith("A token"))
        token = lines[intro + 1].strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/markets/BCCBTC/ticker",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert "last" in json.loads(response.read())
        assert f"Ctrl-C (or kill {process.pid}) stops both." in lines
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=RUN_TIMEOUT) == 0
        assert process.stderr is not None
        # Each call it served shows in the terminal, as a text line.
        assert "gateway.access GET /v1/markets/{market}/ticker 200" in process.stderr.read()


def test_a_demo_port_in_use_is_one_clear_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with demo(tmp_path, port, free_port()) as process:
            _, errors = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 1
    assert errors.splitlines() == [
        f"expie-gateway: cannot listen on 127.0.0.1:{port}: the address is in use "
        "(pick another: make demo PORT=...)"]
