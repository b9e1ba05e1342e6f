"""Running ``expie-gateway`` as a real process: the CLI, and ``serve`` on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0


def cli_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any gateway setting, plus ``extra``."""
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("EXPIE_GW_")}
    return {**environ, **(extra or {})}


def cli(*args: str | Path, env: Mapping[str, str] | None = None,
        stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``expie-gateway ARGS`` from the repository root; its status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)], cwd=ROOT, env=cli_environment(env),
        input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = cli_environment({"EXPIE_GW_SERVER__PORT": str(port)})
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=RUN_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()


def health(port: int, attempts: int = 100) -> dict[str, object] | None:
    """``/healthz`` once it answers (polled every 0.1 s, ``attempts`` times), else None."""
    for _ in range(attempts):
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                body: dict[str, object] = json.loads(response.read())
                return body
        time.sleep(0.1)
    return None
