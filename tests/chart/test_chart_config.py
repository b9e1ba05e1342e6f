"""The gateway.yaml the chart renders, the Secret beside it, and what rolls the pods."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import Suite
from tests.chart.rendering import (
    CHART,
    SECRETS_DIR,
    Manifest,
    gateway_config,
    gateway_config_files,
    gateway_deployment,
    secret_files,
)
from tests.chart.value_sets import (
    ALPHA_TOKEN,
    BETA_TOKEN,
    REDIS_PASSWORD,
    SENTINELS,
    Material,
)

EXPIE_GATEWAY = Path(sys.executable).with_name("expie-gateway")
RENDERED_SECRET_SETS = ("default", "staging", "issuers", "single", "single-rotated-keys",
                        "single-redis-password", "workers")


def secret_paths(settings: Any) -> set[str]:
    """Every ``*_file`` path of ``settings`` (and the users file)."""
    found: set[str] = set()
    if isinstance(settings, dict):
        for key, value in settings.items():
            if isinstance(value, str) and (key.endswith("_file") or key == "file"):
                found.add(value)
            else:
                found |= secret_paths(value)
    elif isinstance(settings, list):
        for item in settings:
            found |= secret_paths(item)
    return found


def secret_names(settings: dict[str, Any]) -> set[str]:
    return {path.removeprefix(SECRETS_DIR + "/") for path in secret_paths(settings)
            if path.startswith(SECRETS_DIR + "/")}


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """``expie-gateway check-config`` from a directory holding nothing else, as in the image."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(config.parent)}
    return subprocess.run([str(EXPIE_GATEWAY), "check-config", "--config", str(config)],
                          cwd=config.parent, env=environ, capture_output=True, text=True,
                          timeout=60, check=False)


def existing_secret_files(material: Material) -> dict[str, bytes]:
    """What an operator puts into the production set's existingSecret (its NOTES list it)."""
    return {"account-desk-alpha": ALPHA_TOKEN.encode(), "account-desk-beta": BETA_TOKEN.encode(),
            "key-prod-2.pem": material.es256_pem.encode(),
            "key-prod-1.pub.pem": material.es256_public_pem.encode(),
            "users.yaml": yaml.safe_dump({"users": []}).encode(),
            "redis-password": REDIS_PASSWORD.encode()}


@pytest.mark.parametrize("name", RENDERED_SECRET_SETS)
def test_the_rendered_settings_pass_check_config(suite: Suite, name: str, tmp_path: Path) -> None:
    config = gateway_config_files(suite[name].manifests, tmp_path)
    done = check_config(config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: ok")


def test_the_production_settings_pass_check_config_with_the_secret_its_notes_describe(
    suite: Suite, material: Material, tmp_path: Path
) -> None:
    rendered = suite["production"]
    files = existing_secret_files(material)
    listed = set(re.findall(r"^  (\S+) ", rendered.notes, re.MULTILINE))
    assert listed >= set(files)
    assert secret_names(gateway_config(rendered.manifests)) == set(files)
    done = check_config(gateway_config_files(rendered.manifests, tmp_path, secrets=files))
    assert done.returncode == 0, done.stderr
    assert "2 accounts" in done.stdout
    assert "redis on" in done.stdout


def test_a_wrong_secret_fails_check_config(suite: Suite, tmp_path: Path) -> None:
    """The check above can fail: an unreadable key is refused."""
    manifests = suite["single"].manifests
    files = {**secret_files(manifests), "key-single-1.pem": b"not a key"}
    done = check_config(gateway_config_files(manifests, tmp_path, secrets=files))
    assert done.returncode == 2
    assert "single-1" in done.stderr


@pytest.mark.parametrize("name", RENDERED_SECRET_SETS)
def test_the_secret_holds_exactly_the_files_the_settings_read(suite: Suite, name: str) -> None:
    manifests = suite[name].manifests
    assert secret_names(gateway_config(manifests)) == set(secret_files(manifests))


@pytest.mark.parametrize("name", [*RENDERED_SECRET_SETS, "production"])
def test_no_secret_value_is_outside_the_secret(
    suite: Suite, material: Material, name: str
) -> None:
    rendered = suite[name]
    outside = json.dumps([m for m in rendered.manifests if m["kind"] != "Secret"])
    outside += rendered.notes
    pem_lines = {line for pem in material.pems for line in pem.splitlines()
                 if "-----" not in line}
    for secret in [*SENTINELS, *pem_lines]:
        assert secret not in outside
    config_maps = [m for m in rendered.manifests if m["kind"] == "ConfigMap"]
    assert config_maps
    # ... and the values did carry them: into the Secret (unless it is an existingSecret).
    if name != "production":
        inside = b"".join(secret_files(rendered.manifests).values()).decode()
        assert all(secret in inside for secret in given_secrets(rendered.values))


def given_secrets(values: Any) -> list[str]:
    """The sentinels and PEMs anywhere in ``values``."""
    if isinstance(values, dict):
        return [s for value in values.values() for s in given_secrets(value)]
    if isinstance(values, list):
        return [s for value in values for s in given_secrets(value)]
    if isinstance(values, str) and (values in SENTINELS or "-----BEGIN" in values):
        return [values]
    return []


def test_the_sentinels_reach_the_secret(suite: Suite) -> None:
    files = secret_files(suite["single-redis-password"].manifests)
    assert files["account-desk-alpha"].decode() == ALPHA_TOKEN
    assert files["account-desk-beta"].decode() == BETA_TOKEN
    assert files["redis-password"].decode() == REDIS_PASSWORD
    settings = gateway_config(suite["single-redis-password"].manifests)
    assert settings["redis"] == {"url": "redis://redis:6379/0", "require_persistence": True,
                                 "password_file": f"{SECRETS_DIR}/redis-password"}


def annotations(manifests: list[Manifest]) -> dict[str, str]:
    found: dict[str, str] = gateway_deployment(manifests)["spec"]["template"]["metadata"][
        "annotations"]
    return found


def test_a_settings_change_rolls_the_pods(suite: Suite) -> None:
    before = annotations(suite["single"].manifests)
    after = annotations(suite["single-config-changed"].manifests)
    assert re.fullmatch(r"[0-9a-f]{64}", before["checksum/config"])
    assert before["checksum/config"] != after["checksum/config"]
    assert before["checksum/secret"] == after["checksum/secret"]
    assert gateway_config(suite["single-config-changed"].manifests)["logging"] == {
        "level": "DEBUG"}


def test_a_secret_change_rolls_the_pods(suite: Suite) -> None:
    before = annotations(suite["single"].manifests)
    after = annotations(suite["single-secret-changed"].manifests)
    assert re.fullmatch(r"[0-9a-f]{64}", before["checksum/secret"])
    assert before["checksum/secret"] != after["checksum/secret"]
    assert before["checksum/config"] == after["checksum/config"]


def test_an_existing_secret_is_mounted_not_rendered(suite: Suite) -> None:
    manifests = suite["production"].manifests
    assert "Secret" not in {m["kind"] for m in manifests}
    assert "checksum/secret" not in annotations(manifests)


def grace(manifests: list[Manifest]) -> int:
    seconds: int = gateway_deployment(manifests)["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    return seconds


@pytest.mark.parametrize("name", ["default", "single", "long-drain", "production"])
def test_the_grace_period_outlasts_the_drain(suite: Suite, name: str) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["server"]
    server = {**defaults, **suite[name].values.get("server", {})}
    settings = gateway_config(suite[name].manifests)["server"]
    assert (settings["drain_delay"], settings["shutdown_timeout"]) == (
        server["drainDelay"], server["shutdownTimeout"])
    assert grace(suite[name].manifests) > server["drainDelay"] + server["shutdownTimeout"]


def test_a_long_drain_gets_a_longer_grace_period(suite: Suite) -> None:
    assert grace(suite["long-drain"].manifests) > 30 + 45.5 + 5  # and the audit spool's 5 s
    assert grace(suite["long-drain"].manifests) > grace(suite["single"].manifests)


def test_a_long_enough_grace_period_is_taken_as_given(suite: Suite) -> None:
    assert grace(suite["grace-set"].manifests) == 60


def test_the_settings_follow_the_values(suite: Suite) -> None:
    settings = gateway_config(suite["production"].manifests)
    assert settings["server"]["trusted_proxies"] == ["10.42.0.0/16"]
    assert settings["server"]["public_url"] == "https://gateway.desk.example"
    assert settings["upstream"]["base_url"] == "https://exchange.desk.example"
    assert settings["redis"]["url"] == "rediss://redis.data.svc:6380/0"
    assert settings["redis"]["require_persistence"] is True
    assert settings["audit"]["backend"] == "auto"
    assert settings["audit"]["checkpoint_file"] == "/var/lib/expie-gateway/audit-checkpoint.json"
    assert settings["auth"]["signing_key"] == "prod-2"
    assert settings["auth"]["keys"] == [
        {"kid": "prod-2", "algorithm": "ES256",
         "private_key_file": f"{SECRETS_DIR}/key-prod-2.pem"},
        {"kid": "prod-1", "algorithm": "ES256",
         "public_key_file": f"{SECRETS_DIR}/key-prod-1.pub.pem"}]
    # config: merged in as written
    assert settings["logging"] == {"level": "WARNING"}
    assert settings["cache"] == {"ticker_ttl": 0.5}
    assert settings["orders"] == {"pacing": {"rate": 20}}


def test_workers_reach_the_settings_and_the_pods_run_the_plain_serve(suite: Suite) -> None:
    assert gateway_config(suite["default"].manifests)["server"]["workers"] == 1
    assert gateway_config(suite["workers"].manifests)["server"]["workers"] == 4
    # The process reads server.workers itself: the command stays the image's own.
    for name in ("default", "workers"):
        container = gateway_deployment(suite[name].manifests)["spec"]["template"]["spec"][
            "containers"][0]
        assert container["args"] == ["serve", "--config", "/etc/expie-gateway/gateway.yaml"]


def test_one_subscription_per_market_is_on_by_default_and_its_lease_follows_the_values(
    suite: Suite,
) -> None:
    assert gateway_config(suite["workers"].manifests)["ws"]["cluster"] == {
        "enabled": True, "lease_ttl": 3, "renew_interval": 0.75}
    assert gateway_config(suite["leadership-tuned"].manifests)["ws"]["cluster"] == {
        "enabled": True, "lease_ttl": 6, "renew_interval": 1.5}


def test_staging_may_run_on_a_redis_without_persistence_and_keep_the_checkpoint_elsewhere(
    suite: Suite,
) -> None:
    settings = gateway_config(suite["staging-redis-without-persistence"].manifests)
    assert settings["redis"] == {"url": "redis://redis:6379/0", "require_persistence": False}
    assert settings["audit"]["checkpoint_file"] == "/archive/cp.json"


def test_trusted_external_issuers_are_rendered(suite: Suite) -> None:
    issuers = gateway_config(suite["issuers"].manifests)["auth"]["external_issuers"]
    assert issuers == [
        {"issuer": "https://sso.desk.example/realms/desk",
         "jwks_url": "https://sso.desk.example/realms/desk/protocol/openid-connect/certs",
         "audience": "expie-gateway", "user_claim": "preferred_username",
         "algorithms": ["RS256", "ES256"], "jwks_ttl": 120},
        {"issuer": "https://login.partner.example",
         "jwks_url": "https://login.partner.example/.well-known/jwks.json",
         "audience": "desk-gateway", "user_claim": "sub"}]


def test_one_replica_without_redis_keeps_its_state_in_the_volume(suite: Suite) -> None:
    settings = gateway_config(suite["single"].manifests)
    assert settings["redis"]["url"] == ""
    assert settings["audit"]["backend"] == "file"
    assert settings["audit"]["file"] == "/var/lib/expie-gateway/audit.jsonl"
    assert settings["orders"]["kill_switch"]["state_file"] == (
        "/var/lib/expie-gateway/kill-switches.json")
