"""The chart as Helm and Kubernetes see it: Chart.yaml, helm lint --strict, the API schemas,
the values' documentation and the schema's refusals."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from tests.chart.conftest import Suite
from tests.chart.rendering import CHART, ROOT, gateway_deployment
from tests.chart.value_sets import REFUSALS

MAIN_SETS = ("default", "staging", "production", "issuers", "single")
CRD_KINDS = {"ServiceMonitor"}
WARNING = 2


def test_chart_yaml_is_v2_and_its_app_version_is_the_package_version(
    chart_yaml: dict[str, Any]
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart_yaml["apiVersion"] == "v2"
    assert chart_yaml["type"] == "application"
    assert chart_yaml["appVersion"] == pyproject["project"]["version"]


def test_the_image_tag_defaults_to_the_app_version(
    suite: Suite, chart_yaml: dict[str, Any]
) -> None:
    for name in MAIN_SETS:
        for deployment in (m for m in suite[name].manifests if m["kind"] == "Deployment"):
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image == f"expie-gateway:{chart_yaml['appVersion']}", name


def test_manifests_are_validated_against_every_kubernetes_version_the_chart_claims(
    suite: Suite, chart_yaml: dict[str, Any]
) -> None:
    lowest = re.search(r"1\.(\d+)", chart_yaml["kubeVersion"])
    assert lowest is not None
    assert suite.versions[0] == f"1.{lowest.group(1)}.0"
    assert suite.versions[-1] == "1.37.0"  # the newest kubernetes-validate 1.37 knows
    assert len(suite.versions) == 37 - int(lowest.group(1)) + 1


@pytest.mark.parametrize("name", [
    *MAIN_SETS, "single-rotated-keys", "single-redis-password", "workers", "long-drain",
    "grace-set"])
def test_helm_lint_strict_finds_nothing(suite: Suite, name: str) -> None:
    report = suite[name].lint
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


@pytest.mark.parametrize("name", MAIN_SETS)
def test_every_manifest_passes_the_kubernetes_schemas(suite: Suite, name: str) -> None:
    rendered = suite[name]
    assert rendered.validation["problems"] == []
    # Only CRDs go unvalidated (kubernetes-validate has no schema for them).
    skipped_kinds = {label.split("/")[0] for label in rendered.validation["skipped"]}
    assert skipped_kinds <= CRD_KINDS
    assert skipped_kinds == CRD_KINDS & {m["kind"] for m in rendered.manifests}


def test_a_broken_manifest_would_be_caught(suite: Suite) -> None:
    """The validation the tests rely on does refuse what Kubernetes would."""
    from tests.chart.rendering import run_tools  # noqa: PLC0415 - the one extra call

    deployment = gateway_deployment(suite["default"].manifests)
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    answer = run_tools("validate", "--kubernetes-version", suite.versions[0],
                       payload=[broken, unknown])
    assert len(answer["problems"]) == 2


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_name_the_value(suite: Suite, name: str) -> None:
    _, named = REFUSALS[name]
    message = suite.refusals[name]
    assert message, f"{name} rendered"
    assert named in message


def test_every_value_is_documented() -> None:
    """Each key of values.yaml down to the second level has a comment of its own right above it
    (the open-ended maps, resources and the simulator's own config excepted)."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    free_form = ("resources", "annotations", "config", "requests", "limits", "dns")
    undocumented = []
    parents: list[str] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match is None or line.lstrip().startswith("#"):
            continue
        depth = len(match.group(1)) // 2
        parents = [*parents[:depth], match.group(2)]
        if depth > 1 or any(parent in free_form for parent in parents[:-1]):
            continue
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("#"):
            undocumented.append(".".join(parents))
    assert undocumented == []
