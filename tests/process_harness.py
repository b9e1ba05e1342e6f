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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from tests.simulator_harness import RunningSimulator

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
def serving(config: Path, port: int, env: Mapping[str, str] | None = None, *,
            args: Sequence[str] = (), log: Path | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    """``serve ARGS`` on loopback ``port``; no drain delay unless ``env`` sets one. Its stderr
    goes to the file ``log`` when given (read it while the process runs), else to a pipe."""
    env = cli_environment({"EXPIE_GW_SERVER__HOST": "127.0.0.1",
                           "EXPIE_GW_SERVER__PORT": str(port),
                           "EXPIE_GW_SERVER__DRAIN_DELAY": "0", **(env or {})})
    with contextlib.ExitStack() as files:
        stderr: IO[bytes] | int = (subprocess.PIPE if log is None
                                   else files.enter_context(log.open("wb")))
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args], cwd=ROOT,
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=RUN_TIMEOUT)
            if process.stderr is not None:
                process.stderr.close()


def process_config(directory: Path, sim: RunningSimulator, **sections: object) -> Path:
    """A config in ``directory`` for a process in front of ``sim``: a generated key, the sim's
    account tokens in files, the example users; ``sections`` added or replacing."""
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
        **sections,
    }), encoding="utf-8")
    return config


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON lines a gateway process logged (anything else, a traceback's text, skipped)."""
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def logged(text: str, message: str, **fields: object) -> bool:
    """Whether a JSON line of ``text`` starts its message with ``message`` and has ``fields``."""
    return any(record.get("message", "").startswith(message)
               and all(record.get(name) == value for name, value in fields.items())
               for record in log_records(text))


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
