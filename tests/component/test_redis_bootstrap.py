"""``make test`` makes sure a Redis answers at REDIS_URL: the script that does it, for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-redis.sh"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure(url: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url, "REDIS_RUN_DIR": str(run_dir)}
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the script keeps pid files; any server it started is stopped afterwards."""
    yield tmp_path
    for pid_file in tmp_path.glob("redis-*.pid"):
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


@pytest.mark.redis
def test_an_answering_redis_is_used_as_it_is(run_dir: Path) -> None:
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    result = ensure(url, run_dir)
    assert result.returncode == 0, result.stderr
    assert "answering" in result.stdout
    assert not list(run_dir.glob("redis-*.pid"))


@pytest.mark.redis
def test_a_loopback_redis_is_started_when_none_answers(run_dir: Path) -> None:
    port = free_port()
    result = ensure(f"redis://127.0.0.1:{port}/0", run_dir)
    assert result.returncode == 0, result.stderr
    assert "starting redis-server" in result.stdout
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        assert client.ping()
    finally:
        client.close()

