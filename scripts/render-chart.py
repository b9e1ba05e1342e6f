"""Render, lint and validate the Helm chart offline, with Helm's own engine.

Runs in the chart tools' environment (.venv-tools: helm-python-sdk, kubernetes-validate; made
by `make tools`), which has no helm binary and needs no cluster. Every command prints JSON.

    render-chart.py render [--values FILE] [--release gw] [--namespace desk]
        {"manifests": [object, ...], "notes": "..."}; a refusal (schema or `fail`) prints
        {"error": "..."} and exits 3
    render-chart.py lint [--values FILE] [--kube-version v1.30.0]
        helm lint --strict's report: {"messages": [{"severity", "path", "error"}], "errors": []}
    render-chart.py validate --kubernetes-version 1.30 [--kubernetes-version 1.37 ...]
        manifests (a JSON list) on stdin: {"problems": [...], "skipped": ["Kind/name", ...]}
        (kinds kubernetes-validate has no schema for, such as CRDs, are skipped, not passed)
    render-chart.py suite
        a batch on stdin, {"release", "namespace", "versions": [...], "sets": {name: values}},
        answered as {"versions": [...known...], "sets": {name: {render, lint, validation}}}
        in one process

Values are JSON, read from --values FILE or stdin ("-").
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from kubernetes_validate.utils import all_versions

CHART = Path(__file__).resolve().parent.parent / "helm" / "expie-gateway"
REFUSED = 3

# kubernetes-validate reads (and parses) a schema file and the version's definitions on every
# call; read each once per process instead, as the same few are asked for many times here.
kubernetes_validate.utils.schema_contents = functools.cache(
    kubernetes_validate.utils.schema_contents)


def render(chart: Path, values: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    try:
        templates = helm_python.Chart.load(chart).render(
            values, name=release, namespace=namespace, is_install=True)
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as exc:
        return {"error": str(exc)}
    manifests: list[Any] = []
    notes = ""
    for name, text in sorted(templates.items()):
        if name.endswith("NOTES.txt"):
            notes = text
        elif name.endswith((".yaml", ".yml")):
            manifests += [document for document in yaml.safe_load_all(text) if document]
    return {"manifests": manifests, "notes": notes}


def lint(chart: Path, values: dict[str, Any], kube_version: str | None = None) -> Any:
    return helm_python.lint(chart, values, strict=True, kube_version=kube_version)


def validate(manifests: list[dict[str, Any]], versions: list[str]) -> dict[str, list[str]]:
    problems: list[str] = []
    skipped: list[str] = []
    for manifest in manifests:
        label = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.append(label)
                break
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{label} on {version}: {exc.message} at "
                                f"{'.'.join(map(str, exc.path))}")
    return {"problems": problems, "skipped": sorted(set(skipped))}


def known_versions() -> list[str]:
    return sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))


def suite(chart: Path, batch: dict[str, Any]) -> dict[str, Any]:
    versions = batch.get("versions") or known_versions()
    results: dict[str, Any] = {}
    for name, values in batch["sets"].items():
        rendered = render(chart, values, batch.get("release", "gw"), batch.get("namespace", "desk"))
        result: dict[str, Any] = {"render": rendered}
        if "error" not in rendered:
            result["lint"] = lint(chart, values)
            result["validation"] = validate(rendered["manifests"], versions)
        results[name] = result
    return {"versions": known_versions(), "sets": results}


def read_json(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return json.loads(text) if text.strip() else {}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="render-chart.py", description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("render", "lint"):
        sub = commands.add_parser(command)
        sub.add_argument("--values", default="-", help="a JSON file of values; - is stdin")
        if command == "render":
            sub.add_argument("--release", default="gw")
            sub.add_argument("--namespace", default="desk")
        else:
            sub.add_argument("--kube-version", default=None)
    commands.add_parser("validate").add_argument(
        "--kubernetes-version", action="append", required=True)
    commands.add_parser("suite")
    commands.add_parser("versions")
    args = parser.parse_args(argv)

    status = 0
    answer: Any
    if args.command == "render":
        answer = render(args.chart, read_json(args.values), args.release, args.namespace)
        status = REFUSED if "error" in answer else 0
    elif args.command == "lint":
        answer = lint(args.chart, read_json(args.values), args.kube_version)
    elif args.command == "validate":
        answer = validate(read_json("-"), args.kubernetes_version)
    elif args.command == "suite":
        answer = suite(args.chart, read_json("-"))
    else:
        answer = known_versions()
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
