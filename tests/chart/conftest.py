"""Renders every value set once per session, in one run of the chart tools."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART, Manifest, check_rendered, run_tools
from tests.chart.value_sets import REFUSALS, Material, value_sets

KUBE_VERSION = re.compile(r"^>=\s*1\.(\d+)\.0(-0)?$")


@dataclass(frozen=True)
class Rendered:
    values: dict[str, Any]
    manifests: list[Manifest]
    notes: str
    lint: dict[str, Any]
    validation: dict[str, list[str]]


@dataclass(frozen=True)
class Suite:
    versions: list[str]      # the Kubernetes versions the manifests were validated against
    sets: dict[str, Rendered]
    refusals: dict[str, str]  # name: Helm's message

    def __getitem__(self, name: str) -> Rendered:
        return self.sets[name]


def claimed_versions(kube_version: str, known: list[str]) -> list[str]:
    """The versions kubernetes-validate knows that Chart.yaml's kubeVersion claims."""
    match = KUBE_VERSION.match(kube_version)
    assert match, f"kubeVersion {kube_version!r} is not of the form >=1.N.0-0 the tests read"
    lowest = int(match.group(1))
    return [version for version in known if int(version.split(".")[1]) >= lowest]


@pytest.fixture(scope="session")
def material() -> Material:
    return Material.make()


@pytest.fixture(scope="session")
def chart_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="session")
def suite(material: Material, chart_yaml: dict[str, Any]) -> Suite:
    versions = claimed_versions(chart_yaml["kubeVersion"], run_tools("versions", payload={}))
    sets = value_sets(material)
    batch = {"release": "gw", "namespace": "desk", "versions": versions,
             "sets": {**sets, **{f"refusal:{name}": values
                                 for name, (values, _) in REFUSALS.items()}}}
    answer = run_tools("suite", payload=batch)["sets"]
    rendered = {}
    for name, values in sets.items():
        result = answer[name]
        manifests = check_rendered(result["render"])
        rendered[name] = Rendered(values, manifests, result["render"]["notes"], result["lint"],
                                  result["validation"])
    refusals = {name: answer[f"refusal:{name}"]["render"].get("error", "")
                for name in REFUSALS}
    return Suite(versions, rendered, refusals)
