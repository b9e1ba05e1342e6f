"""The objects the chart renders: what the pods run, how they are kept safe and reachable."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from aiohttp import web

from simulator.config import parse_config
from tests.chart.conftest import Suite
from tests.chart.rendering import (
    STATE_DIR,
    Manifest,
    find,
    gateway_config,
    gateway_deployment,
    secret_files,
)
from tests.chart.value_sets import SIM_IN_CLUSTER

SETS = ("default", "staging", "production", "issuers", "single")
NAME = "gw-expie-gateway"
UID = 10001


def pod(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: Manifest) -> dict[str, Any]:
    (only,) = pod(deployment)["containers"]
    return dict(only)


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


@pytest.fixture(scope="module")
def served_get_paths() -> set[str]:
    """The paths the gateway's router answers GET on, from its own route table."""
    from gateway.web.routes import setup_routes  # noqa: PLC0415 - only these tests need it

    app = web.Application()
    setup_routes(app)
    return {route.resource.canonical for route in app.router.routes()
            if route.method == "GET" and route.resource is not None}


def test_the_default_install(suite: Suite) -> None:
    manifests = suite["default"].manifests
    assert kinds(manifests) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret",
                                "Service", "ServiceAccount"]
    deployment = find(manifests, "Deployment", NAME)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    gateway = container(deployment)
    assert gateway["args"] == ["serve", "--config", "/etc/expie-gateway/gateway.yaml"]
    assert "command" not in gateway  # the image's ENTRYPOINT, expie-gateway
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in gateway["env"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert set(gateway["resources"]) == {"requests", "limits"}
    assert all(set(gateway["resources"][k]) == {"cpu", "memory"} for k in ("requests", "limits"))
    assert gateway_config(manifests)["server"]["port"] == 8080
    budget = find(manifests, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"][
        "matchLabels"]


@pytest.mark.parametrize("name", SETS)
def test_the_service_reaches_the_gateway_pods_on_port_http(suite: Suite, name: str) -> None:
    manifests = suite[name].manifests
    service = find(manifests, "Service", NAME)
    deployment = find(manifests, "Deployment", NAME)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_the_gateway_listens_where_its_container_port_says(suite: Suite) -> None:
    rendered = suite["single"]
    assert gateway_config(rendered.manifests)["server"]["host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container(
        gateway_deployment(rendered.manifests))["ports"]}
    assert ports == {"http": gateway_config(rendered.manifests)["server"]["port"]}


@pytest.mark.parametrize("name", SETS)
def test_probes_ask_paths_the_gateway_serves(
    suite: Suite, served_get_paths: set[str], name: str
) -> None:
    gateway = container(gateway_deployment(suite[name].manifests))
    probes = {kind: gateway[kind]["httpGet"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": {"path": "/readyz", "port": "http"},
                      "livenessProbe": {"path": "/healthz", "port": "http"},
                      "readinessProbe": {"path": "/readyz", "port": "http"}}
    assert {probe["path"] for probe in probes.values()} <= served_get_paths


@pytest.mark.parametrize("name", SETS)
def test_every_pod_runs_locked_down(suite: Suite, name: str) -> None:
    deployments = [m for m in suite[name].manifests if m["kind"] == "Deployment"]
    assert len(deployments) == (2 if name == "staging" else 1)
    for deployment in deployments:
        spec = pod(deployment)
        assert spec["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}
        assert spec["automountServiceAccountToken"] is False
        for each in spec["containers"]:
            context = each["securityContext"]
            assert context["runAsNonRoot"] is True
            assert (context["runAsUser"], context["runAsGroup"]) == (UID, UID)
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    account = find(suite[name].manifests, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", SETS)
def test_the_process_writes_only_to_its_volumes(suite: Suite, name: str) -> None:
    manifests = suite[name].manifests
    deployment = gateway_deployment(manifests)
    volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable == {STATE_DIR, "/tmp"}
    for path in writable:
        assert "emptyDir" in volumes[mounts[path]["name"]]
    config = gateway_config(manifests)
    assert config["audit"]["file"].startswith(STATE_DIR + "/")
    switches = config.get("orders", {}).get("kill_switch", {}).get("state_file")
    assert (switches is None) == bool(config["redis"]["url"])
    if switches is not None:
        assert switches.startswith(STATE_DIR + "/")


def test_the_pods_spread_across_nodes_and_zones(suite: Suite) -> None:
    spec = pod(gateway_deployment(suite["default"].manifests))
    selector = gateway_deployment(suite["default"].manifests)["spec"]["selector"]["matchLabels"]
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread.values():
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"] == selector


def test_production_renders_its_optional_objects(suite: Suite) -> None:
    manifests = suite["production"].manifests
    assert kinds(manifests) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
        "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor"]
    deployment = gateway_deployment(manifests)
    assert "replicas" not in deployment["spec"]  # the autoscaler's
    volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "desk-gateway-secrets"
    autoscaler = find(manifests, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 12)
    monitor = find(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "scheme": "http", "interval": "30s",
         "scrapeTimeout": "10s"}]
    service = find(manifests, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()


def test_the_metrics_path_is_served(suite: Suite, served_get_paths: set[str]) -> None:
    (endpoint,) = find(suite["production"].manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["path"] in served_get_paths


def test_the_ingress_keeps_websockets_open(suite: Suite) -> None:
    ingress = find(suite["production"].manifests, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert ingress["spec"]["tls"] == [{"secretName": "gateway-tls",
                                       "hosts": ["gateway.desk.example"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "gateway.desk.example"
    (path,) = rule["http"]["paths"]
    assert path["backend"] == {"service": {"name": NAME, "port": {"name": "http"}}}


def test_the_network_policy_lets_through_only_what_the_gateway_needs(suite: Suite) -> None:
    policy = find(suite["production"].manifests, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"] == suite["production"].values["networkPolicy"]["ingressFrom"]
    dns, redis, exchange = policy["egress"]
    assert dns["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert redis["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
    assert redis["ports"] == [{"port": 6380, "protocol": "TCP"}]
    assert exchange == {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                        "ports": [{"port": 443, "protocol": "TCP"}]}


def test_staging_runs_the_simulator_as_the_upstream(suite: Suite) -> None:
    manifests = suite["staging"].manifests
    simulator = find(manifests, "Deployment", SIM_IN_CLUSTER)
    sim = container(simulator)
    assert sim["command"] == ["expie-sim"]
    args = sim["args"]
    assert args[:6] == ["--host", "0.0.0.0", "--port", "8081", "--config",
                        "/etc/expie-sim/simulator.yaml"]
    assert simulator["spec"]["replicas"] == 1
    assert sim["image"] == container(gateway_deployment(manifests))["image"]
    mounts = {m["mountPath"]: m for m in sim["volumeMounts"]}
    assert mounts["/etc/expie-sim/simulator.yaml"]["subPath"] == "simulator.yaml"
    service = find(manifests, "Service", SIM_IN_CLUSTER)
    assert service["spec"]["ports"][0]["port"] == 8081
    assert service["spec"]["selector"].items() <= simulator["spec"]["template"]["metadata"][
        "labels"].items()
    assert gateway_config(manifests)["upstream"]["base_url"] == f"http://{SIM_IN_CLUSTER}:8081"

    # The simulator's own loader takes its ConfigMap; the gateway's tokens are its accounts'.
    text = find(manifests, "ConfigMap", SIM_IN_CLUSTER)["data"]["simulator.yaml"]
    sim_config = parse_config(yaml.safe_load(text))
    tokens = {a.name: a.token for a in sim_config.accounts}
    files = secret_files(manifests)
    assert {name: files[f"account-{name}"].decode() for name in tokens} == tokens
    assert [a["name"] for a in gateway_config(manifests)["accounts"]] == list(tokens)


def test_staging_network_policies_join_the_gateway_and_the_simulator(suite: Suite) -> None:
    manifests = suite["staging"].manifests
    gateway = find(manifests, "NetworkPolicy", NAME)["spec"]
    simulator_labels = find(manifests, "Deployment", SIM_IN_CLUSTER)["spec"]["selector"][
        "matchLabels"]
    to_simulator = [rule for rule in gateway["egress"]
                    if rule["to"] == [{"podSelector": {"matchLabels": simulator_labels}}]]
    assert [rule["ports"] for rule in to_simulator] == [[{"port": 8081, "protocol": "TCP"}]]
    # No rule to the exchange or to Redis: neither is used.
    assert len(gateway["egress"]) == 2
    simulator = find(manifests, "NetworkPolicy", SIM_IN_CLUSTER)["spec"]
    gateway_labels = gateway_deployment(manifests)["spec"]["selector"]["matchLabels"]
    assert simulator["ingress"] == [{"from": [{"podSelector": {"matchLabels": gateway_labels}}],
                                     "ports": [{"port": "http", "protocol": "TCP"}]}]
    assert simulator["egress"] == []


def test_one_replica_has_no_disruption_budget(suite: Suite) -> None:
    assert "PodDisruptionBudget" not in kinds(suite["single"].manifests)
    assert gateway_deployment(suite["single"].manifests)["spec"]["replicas"] == 1


def test_notes_say_how_to_get_a_token_and_call_the_gateway(suite: Suite) -> None:
    notes = suite["default"].notes
    assert ("kubectl -n desk exec deploy/gw-expie-gateway -- \\\n    expie-gateway token issue "
            "--config /etc/expie-gateway/gateway.yaml --user <user-id>") in notes
    assert "-d grant_type=client_credentials" in notes
    assert "http://127.0.0.1:8080/auth/token" in notes
    assert "kubectl -n desk port-forward svc/gw-expie-gateway 8080:8080" in notes
    assert 'curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/v1/markets' in notes
