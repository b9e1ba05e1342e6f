"""Gateway settings: the documented defaults file, environment overrides, errors naming the key."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core.mapping_reader import ConfigError
from gateway.order_settings import RatePolicy, RiskPolicy, UserLimits
from gateway.settings import SecretRef, Settings, load_settings
from gateway.ws_settings import WebSocketSettings, upstream_ws_url

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_YAML = ROOT / "config" / "gateway.yaml"
# Settings fields whose YAML key lives elsewhere: field -> YAML path.
RENAMED = {"users_file": "users.file"}


def field_paths(cls: type, prefix: str = "") -> set[str]:
    """Every YAML key path the dataclass ``cls`` reads; list items are written ``name[]``."""
    paths: set[str] = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = RENAMED.get(field.name, field.name) if not prefix else field.name
        paths |= _paths_of(hints[field.name], f"{prefix}{name}")
    return paths


def _paths_of(hint: Any, path: str) -> set[str]:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _paths_of(args[0], path)
    if hint is SecretRef:
        return {f"{path}_env", f"{path}_file"}
    if typing.get_origin(hint) is tuple and dataclasses.is_dataclass(args[0]):
        return field_paths(args[0], f"{path}[].")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return field_paths(hint, f"{path}.")
    return {path}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), environ=environ or {})


# --- the documented defaults file -----------------------------------------------------------------


def test_the_documented_file_parses_to_the_defaults_it_documents() -> None:
    settings = load_settings(GATEWAY_YAML, environ={})
    defaults = Settings()
    assert settings.server == defaults.server
    assert settings.upstream == defaults.upstream
    assert settings.redis == defaults.redis
    assert (settings.users_file, settings.logging) == (defaults.users_file, defaults.logging)
    assert settings.auth.signing_key == "gw-key-1"
    assert [account.name for account in settings.accounts] == ["desk-alpha", "desk-beta"]


def test_the_documented_file_has_every_settings_key() -> None:
    text = GATEWAY_YAML.read_text(encoding="utf-8")
    present = documented_paths(yaml.safe_load(text))
    expected = field_paths(Settings)
    assert present <= expected, f"keys the settings do not read: {sorted(present - expected)}"
    # Keys the file shows only in a comment (a commented example, "or private_key_env") must
    # start a comment.
    comments = "\n".join(line for line in text.splitlines() if "#" in line)
    undocumented = [
        path for path in sorted(expected - present)
        if not re.search(rf"#[\s\-]*(or\s+)?{re.escape(path.rpartition('.')[2])}\b", comments)
    ]
    assert not undocumented, f"settings keys config/gateway.yaml does not document: {undocumented}"


def documented_paths(value: object, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if not isinstance(value, dict):
        return paths
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict):
            paths |= documented_paths(item, f"{path}.")
        elif isinstance(item, list) and all(isinstance(element, dict) for element in item):
            for element in item:  # an empty list: its items are documented in comments
                paths |= documented_paths(element, f"{path}[].")
        else:
            paths.add(path)
    return paths


def test_the_key_walk_sees_nested_and_list_keys() -> None:
    expected = field_paths(Settings)
    assert {"server.port", "users.file", "logging.level", "auth.keys[].private_key_env",
            "auth.keys[].public_key_file", "auth.external_issuers[].jwks_url",
            "accounts[].token_file", "redis.revocation_sync_interval"} <= expected


# --- environment overrides ------------------------------------------------------------------------


def test_an_override_is_read_as_yaml() -> None:
    settings = load_settings(GATEWAY_YAML, environ={"EXPIE_GW_AUTH__LEEWAY": "2"})
    assert settings.auth.leeway == 2.0
    assert isinstance(settings.auth.leeway, float)


def test_an_override_sets_a_string() -> None:
    settings = load_settings(GATEWAY_YAML, environ={"EXPIE_GW_REDIS__URL": "redis://x:6379/0"})
    assert settings.redis.url == "redis://x:6379/0"


def test_persistence_is_required_unless_a_test_or_demo_turns_it_off() -> None:
    assert load_settings(GATEWAY_YAML, environ={}).redis.require_persistence
    settings = load_settings(GATEWAY_YAML,
                             environ={"EXPIE_GW_REDIS__REQUIRE_PERSISTENCE": "false"})
    assert not settings.redis.require_persistence


def test_an_override_ending_in_a_colon_is_a_string_not_a_mapping() -> None:
    settings = load_settings(GATEWAY_YAML, environ={"EXPIE_GW_REDIS__KEY_PREFIX": "gw-blue:"})
    assert settings.redis.key_prefix == "gw-blue:"


def test_an_override_sets_a_flow_mapping(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "", {"EXPIE_GW_SERVER": "{host: 0.0.0.0, port: 9000}"})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)


def test_an_override_that_is_not_yaml_is_named() -> None:
    with pytest.raises(ConfigError, match="EXPIE_GW_AUTH__LEEWAY"):
        load_settings(GATEWAY_YAML, environ={"EXPIE_GW_AUTH__LEEWAY": "[1, 2"})


def test_an_override_sets_a_yaml_list() -> None:
    environ = {"EXPIE_GW_ACCOUNTS": "[{name: desk-gamma, token_file: /run/secrets/gamma}]"}
    settings = load_settings(GATEWAY_YAML, environ=environ)
    assert [(a.name, a.token.file) for a in settings.accounts] == [
        ("desk-gamma", Path("/run/secrets/gamma"))]


def test_an_override_creates_a_section_the_file_lacks(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "server: {port: 9000}\n", {"EXPIE_GW_LOGGING__LEVEL": "debug"})
    assert (settings.server.port, settings.logging.level) == (9000, "DEBUG")


def test_variables_outside_the_prefix_are_ignored() -> None:
    settings = load_settings(GATEWAY_YAML, environ={"EXPIE_AUTH__LEEWAY": "x", "HOME": "/root"})
    assert settings.auth.leeway == 5.0


def test_the_config_file_variable_is_not_taken_for_a_key() -> None:
    settings = load_settings(GATEWAY_YAML, environ={"EXPIE_GW_CONFIG": "/etc/gw.yaml"})
    assert settings.server.port == 8080


# --- errors name the key --------------------------------------------------------------------------


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.leway: unknown key"):
        load_text(tmp_path, "auth:\n  leway: 2\n")


def test_an_unknown_override_names_the_key_and_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(GATEWAY_YAML, environ={"EXPIE_GW_AUTH__NOPE": "1"})
    assert "auth.nope" in str(caught.value)
    assert "EXPIE_GW_AUTH__NOPE" in str(caught.value)


def test_a_bad_overridden_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"server\.port.*EXPIE_GW_SERVER__PORT"):
        load_settings(GATEWAY_YAML, environ={"EXPIE_GW_SERVER__PORT": "-1"})


def test_an_error_in_the_file_does_not_blame_an_unrelated_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "server: {port: -1}\n", {"EXPIE_GW_SERVER__HOST": "0.0.0.0"})
    assert "EXPIE_GW" not in str(caught.value)


KEY = "    - {kid: k1, algorithm: EdDSA, private_key_file: /k1.pem}\n"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server: {port: -1}\n", "server.port"),
        ("server: {port: eighty}\n", "server.port"),
        ("server: {port: 99999}\n", "server.port"),
        ("server: {port: 0}\n", "server.port"),
        ("server: {shutdown_timeout: 0}\n", "server.shutdown_timeout"),
        ("server: {drain_delay: -1}\n", "server.drain_delay"),
        ("server: {trusted_proxies: [10.0.0.0/33]}\n", "server.trusted_proxies"),
        ("server: {trusted_proxies: 10.0.0.0/8}\n", "server.trusted_proxies"),
        ("upstream: {retries: 1000}\n", "upstream.retries"),
        ("upstream: {base_url: '127.0.0.1:8081'}\n", "upstream.base_url"),
        ("auth:\n  keys:\n    - {kid: k1, algorithm: HS256, private_key_file: /k.pem}\n",
         "auth.keys[0].algorithm"),
        (f"auth:\n  signing_key: missing\n  keys:\n{KEY}", "auth.signing_key"),
        ("auth:\n  keys:\n    - {kid: k1, private_key_env: K, private_key_file: /k.pem}\n",
         "auth.keys[0].private_key_env"),
        ("auth:\n  keys:\n    - {kid: k1}\n", "auth.keys[0].kid"),
        ("auth: {token_ttl: 90000}\n", "auth.token_ttl"),
        ("redis: {url: 'http://redis:6379'}\n", "redis.url"),
        ("redis: {state_check_interval: 2}\n", "redis.state_check_interval"),
        ("redis: {require_persistence: 'yes'}\n", "redis.require_persistence"),
        ("accounts:\n  - {name: desk-alpha}\n", "accounts[0].token_env"),
        ("logging: {level: chatty}\n", "logging.level"),
        ("orders: {limits: {place: {count: 0}}}\n", "orders.limits.place.count"),
        ("orders: {limits: {bulk: {count: 1}}}\n", "orders.limits.bulk"),
        ("orders: {risk: {default: {max_notional: '-1'}}}\n", "orders.risk.default.max_notional"),
        ("orders: {risk: {markets: {BCCBTC: {max_amount: '1'}}}}\n",
         "orders.risk.markets.BCCBTC.max_amount"),
        ("orders: {kill_switch: {sync_interval: 2}}\n", "orders.kill_switch.sync_interval"),
        ("audit: {backend: s3}\n", "audit.backend"),
        ("audit: {backend: redis}\n", "audit.backend"),
        ("ws: {upstream_url: 'http://x/ws'}\n", "ws.upstream_url"),
        ("ws: {upstream_depth_limit: 60}\n", "ws.upstream_depth_limit"),
        ("ws: {verify_interval: 0}\n", "ws.verify_interval"),
        ("ws: {verify_confirm_after: -1}\n", "ws.verify_confirm_after"),
        ("ws: {max_book_age: 0}\n", "ws.max_book_age"),
        ("ws: {verify_interval: 5, max_book_age: 5}\n", "ws.max_book_age"),
        ("ws: {cluster: {lease_ttl: 0}}\n", "ws.cluster.lease_ttl"),
        ("ws: {cluster: {lease_ttl: 2, renew_interval: 1.5}}\n", "ws.cluster.renew_interval"),
        ("ws: {cluster: {enabled: sometimes}}\n", "ws.cluster.enabled"),
        ("logging: {format: xml}\n", "logging.format"),
        ("logging: {access_sample: 1.5}\n", "logging.access_sample"),
    ],
    ids=["negative-port", "port-not-a-number", "port-over-65535", "port-zero",
         "no-shutdown-time", "negative-drain", "bad-cidr", "proxies-not-a-list", "retries",
         "url-without-scheme", "algorithm",
         "signing-key-missing", "env-and-file", "no-key-material", "ttl-over-max", "redis-url",
         "slow-state-check", "persistence-not-a-flag",
         "account-without-token", "log-level", "limit-count-zero", "unknown-limit",
         "negative-notional", "unknown-risk-key", "slow-kill-switch-sync", "audit-backend",
         "audit-in-redis-without-redis", "ws-url-scheme", "ws-depth-limit",
         "ws-verify-zero", "ws-confirm-negative", "ws-book-age-zero", "ws-book-age-too-short",
         "lease-zero", "renewal-slower-than-half-the-lease", "cluster-not-a-flag",
         "log-format", "access-sample-over-one"],
)
def test_a_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value).startswith(f"{key}:")


def test_trusted_proxies_are_networks_and_a_bare_address_is_one_host(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "server: {trusted_proxies: [10.0.0.0/8, '2001:db8::1']}\n")
    assert [str(network) for network in settings.server.trusted_proxies] == [
        "10.0.0.0/8", "2001:db8::1/128"]


def test_a_container_listens_on_every_interface_by_default(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "")
    assert (settings.server.host, settings.server.port, settings.server.drain_delay) == (
        "0.0.0.0", 8080, 5.0)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_text(tmp_path, "- server\n")


def test_order_limits_and_risk_read_from_the_file(tmp_path: Path) -> None:
    settings = load_text(tmp_path, (
        "orders:\n  limits: {place: {count: 3, window: 2}}\n"
        "  risk:\n    default: {max_notional: '5'}\n"
        "    markets: {BCCBTC: {price_band_percent: '2'}}\n"))
    orders = settings.orders
    assert orders.limits.place == RatePolicy(3, 2.0)
    assert orders.limits.cancel == UserLimits().cancel
    # A market's policy starts from the default one and replaces only what it names.
    assert orders.risk.for_market("BCCBTC") == RiskPolicy(
        max_notional=Decimal(5), price_band_percent=Decimal(2))
    assert orders.risk.for_market("ETHBTC") == RiskPolicy(max_notional=Decimal(5))


@pytest.mark.parametrize(("base", "expected"), [
    ("http://127.0.0.1:8081", "ws://127.0.0.1:8081/ws"),
    ("https://api.expie.example/", "wss://api.expie.example/ws"),
])
def test_the_exchanges_websocket_follows_its_rest_root(base: str, expected: str) -> None:
    assert upstream_ws_url(WebSocketSettings(), base) == expected
    assert upstream_ws_url(WebSocketSettings(upstream_url="ws://feed:9/ws"), base) == \
        "ws://feed:9/ws"
