"""What the image runs, without a container engine: the Dockerfile's steps, done here.

The wheel is built as the build stage builds it, from only what the build stage copies; it is
installed into a fresh virtual environment *without* the test extras, as the runtime stage does;
then ``expie-sim`` and ``expie-gateway serve`` run from that environment, outside the repository,
the gateway with the configuration the Helm chart renders. A module that imports a test-only
package at run time, or a file the wheel lacks, fails here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.rendering import gateway_config_files, render_chart
from tests.chart.value_sets import Material, value_sets
from tests.process_harness import ROOT, cli_environment, free_port

BUILD_INPUTS = ("pyproject.toml", "README.md", "gateway", "simulator")  # the Dockerfile's COPYs
TEST_ONLY = ("pytest", "hypothesis", "mypy", "ruff")
INSTALL_TIMEOUT = 240.0
START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel and its runtime dependencies only."""
    root = tmp_path_factory.mktemp("image")
    source = root / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), "."],
        cwd=source)
    wheels = list(dist.glob("expie_gateway-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         str(wheels[0])], cwd=root)
    return venv


def run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=INSTALL_TIMEOUT, env=outside_environment())
    assert done.returncode == 0, done.stdout + done.stderr


def outside_environment(**extra: str) -> dict[str, str]:
    """No gateway settings and nothing that would put the repository on the import path."""
    environ = {name: value for name, value in cli_environment().items()
               if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**environ, "PYTHONDONTWRITEBYTECODE": "1", **extra}


@contextlib.contextmanager
def started(command: list[str], cwd: Path, environ: dict[str, str]
            ) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=START_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


def status_of(url: str, process: subprocess.Popen[bytes]) -> int:
    """The first status ``url`` answers (polled every 0.1 s); fails when the process dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"exited with {process.returncode}: {errors}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {START_TIMEOUT} s")


def test_the_image_environment_holds_no_test_tool(image_venv: Path) -> None:
    listed = subprocess.run(
        [str(image_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=60, env=outside_environment())
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "expie-gateway" in installed
    assert not installed & set(TEST_ONLY)


def test_the_installed_wheel_serves_the_charts_configuration_up_to_ready(
    image_venv: Path, tmp_path: Path
) -> None:
    manifests = render_chart(value_sets(Material.make())["staging"])
    config = gateway_config_files(manifests, tmp_path / "etc")
    work = tmp_path / "work"  # the image's working directory: nothing of the repository
    work.mkdir()
    sim_port, port = free_port(), free_port()
    simulator = [str(image_venv / "bin" / "expie-sim"), "--host", "127.0.0.1", "--port",
                 str(sim_port), "--config", str(ROOT / "config" / "simulator.yaml")]
    gateway = [str(image_venv / "bin" / "expie-gateway"), "serve", "--config", str(config)]
    environ = outside_environment(
        EXPIE_GW_SERVER__HOST="127.0.0.1", EXPIE_GW_SERVER__PORT=str(port),
        EXPIE_GW_UPSTREAM__BASE_URL=f"http://127.0.0.1:{sim_port}")
    with started(simulator, work, outside_environment()) as sim:
        # The simulator has no unauthenticated route: a 401 says it is serving.
        assert status_of(f"http://127.0.0.1:{sim_port}/v1/markets", sim) == 401
        with started(gateway, work, environ) as process:
            assert status_of(f"http://127.0.0.1:{port}/readyz", process) == 200
    assert os.listdir(work) == [], "the process wrote outside its mounted volumes"
