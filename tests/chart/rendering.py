"""The Helm chart rendered with Helm's own engine, through the chart tools' Python.

Helm's engine (helm-python-sdk) and the Kubernetes API schemas (kubernetes-validate) live in an
environment of their own, ``.venv-tools`` (``make tools``; ``make test`` makes it), not among
the package's dependencies: ``scripts/render-chart.py`` runs there and answers in JSON. Without
that environment every chart test fails, naming the command that makes it; it never skips.

For other tests: ``render_chart(values)`` is every object the chart renders, and
``gateway_config_files(manifests, directory)`` writes the rendered gateway.yaml and the files
the pods' Secret holds into ``directory``, as a pod sees them, and returns the gateway.yaml.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.process_harness import ROOT

TOOLS_PYTHON = ROOT / ".venv-tools" / "bin" / "python"
CHART = ROOT / "helm" / "expie-gateway"
SCRIPT = ROOT / "scripts" / "render-chart.py"
# Where the pods see the Secret and their writable volume (templates/_helpers.tpl).
SECRETS_DIR = "/etc/expie-gateway/secrets"
STATE_DIR = "/var/lib/expie-gateway"
REFUSED = 3
TIMEOUT = 120.0
Manifest = dict[str, Any]


class ChartRefused(AssertionError):
    """The chart refused the values (its schema, or a ``fail``); the message is Helm's."""


def run_tools(*args: str, payload: object) -> Any:
    """``render-chart.py ARGS`` in the tools' environment, ``payload`` as JSON on stdin."""
    if not TOOLS_PYTHON.exists():
        raise AssertionError(f"{TOOLS_PYTHON.relative_to(ROOT)} is missing: run `make tools` "
                             "(`make test` makes it)")
    done = subprocess.run([str(TOOLS_PYTHON), str(SCRIPT), *args], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if done.returncode not in (0, REFUSED):
        raise AssertionError(f"render-chart.py {' '.join(args)} failed: {done.stderr}")
    return json.loads(done.stdout)


def check_rendered(rendered: Mapping[str, Any]) -> list[Manifest]:
    """The manifests of a ``render`` answer; ``ChartRefused`` when it is a refusal."""
    if "error" in rendered:
        raise ChartRefused(rendered["error"])
    manifests: list[Manifest] = rendered["manifests"]
    return manifests


def render_chart(values: dict[str, Any], release: str = "gw",
                 namespace: str = "desk") -> list[Manifest]:
    """Every object the chart renders for ``values`` (over values.yaml), as ``helm template``."""
    return check_rendered(run_tools("render", "--release", release, "--namespace", namespace,
                                    payload=values))


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (named ``name``, if given)."""
    found = [m for m in manifests if m["kind"] == kind
             and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} objects {kind}/{name or '*'}"
    return found[0]


def gateway_deployment(manifests: list[Manifest]) -> Manifest:
    return next(m for m in manifests if m["kind"] == "Deployment"
                and m["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway")


def gateway_config(manifests: list[Manifest]) -> dict[str, Any]:
    """The rendered gateway.yaml, parsed."""
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap"
                      and "gateway.yaml" in m.get("data", {}))
    settings: dict[str, Any] = yaml.safe_load(config_map["data"]["gateway.yaml"])
    return settings


def secret_files(manifests: list[Manifest]) -> dict[str, bytes]:
    """The files of the Secret the chart renders, by name."""
    secret = find(manifests, "Secret")
    return {name: base64.b64decode(value) for name, value in secret.get("data", {}).items()}


def gateway_config_files(manifests: list[Manifest], directory: Path,
                         secrets: Mapping[str, bytes] | None = None) -> Path:
    """The rendered gateway.yaml and its Secret's files, written under ``directory`` as a pod
    sees them: the Secret in ``directory/secrets``, the writable volume ``directory/state``, the
    paths in gateway.yaml rewritten to those. ``secrets`` stands for an ``existingSecret``
    (required when the chart renders no Secret). Returns the path of the gateway.yaml."""
    files = dict(secrets) if secrets is not None else secret_files(manifests)
    secrets_dir, state_dir = directory / "secrets", directory / "state"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(exist_ok=True)
    for name, content in files.items():
        path = secrets_dir / name
        path.write_bytes(content)
        path.chmod(0o440)
    settings = _rewrite(gateway_config(manifests), {SECRETS_DIR: secrets_dir, STATE_DIR: state_dir})
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def _rewrite(value: Any, mounts: Mapping[str, Path]) -> Any:
    """``value`` with every string path under one of ``mounts`` moved to its directory."""
    if isinstance(value, dict):
        return {key: _rewrite(item, mounts) for key, item in value.items()}
    if isinstance(value, list):
        return [_rewrite(item, mounts) for item in value]
    if isinstance(value, str):
        for mount, directory in mounts.items():
            if value.startswith(mount + "/"):
                return str(directory / value[len(mount) + 1:])
    return value
