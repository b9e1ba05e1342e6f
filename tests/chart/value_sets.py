"""The value sets the chart tests render: each a kind of install, and the refusals.

Secret inputs are sentinel strings (or real keys made here), so a test can look for them in
every object that must not hold them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from gateway.auth.passwords import hash_secret
from gateway.auth.signing import generate_signing_key, private_pem

ALPHA_TOKEN = "sentinel-account-token-alpha-5b0e9d"
BETA_TOKEN = "sentinel-account-token-beta-c41f27"
REDIS_PASSWORD = "sentinel-redis-password-93ad6e"
CLIENT_SECRET = "sentinel-client-secret-0c8f5a1e"
SENTINELS = (ALPHA_TOKEN, BETA_TOKEN, REDIS_PASSWORD, CLIENT_SECRET)
SIM_IN_CLUSTER = "gw-expie-gateway-simulator"


@dataclass(frozen=True)
class Material:
    """Real keys and a real client-secret hash, made once per session."""

    eddsa_pem: str
    es256_pem: str
    es256_public_pem: str
    secret_hash: str

    @classmethod
    def make(cls) -> Material:
        eddsa = generate_signing_key("k-ed")
        es256 = generate_signing_key("k-es", "ES256")
        public = es256.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(private_pem(eddsa).decode(), private_pem(es256).decode(), public.decode(),
                   hash_secret(CLIENT_SECRET))

    @property
    def pems(self) -> tuple[str, ...]:
        return self.eddsa_pem, self.es256_pem


def users(secret_hash: str, account: str = "desk-alpha") -> list[dict[str, Any]]:
    return [
        {"id": "desk-app", "name": "The desk's trading app", "secret_hash": secret_hash,
         "scopes": ["market:read", "orders:read", "orders:write", "balance:read"],
         "markets": "all", "account": account},
        {"id": "desk-ops", "name": "Operator (tokens from the CLI only)",
         "scopes": ["market:read", "orders:read", "admin"], "markets": ["ETHBTC"],
         "account": account},
    ]


def single(material: Material) -> dict[str, Any]:
    """One replica without Redis: in-process stores, the file audit trail."""
    return {
        "replicaCount": 1,
        "redis": {"url": ""},
        "audit": {"backend": "file"},
        "accounts": [{"name": "desk-alpha", "token": ALPHA_TOKEN}],
        "users": users(material.secret_hash),
        "auth": {"keys": [{"kid": "single-1", "privateKey": material.eddsa_pem}]},
    }


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with ``changes`` merged into it, section by section."""
    values = copy.deepcopy(base)
    for key, change in changes.items():
        if isinstance(change, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **change}
        else:
            values[key] = change
    return values


PRODUCTION_EXTRA: dict[str, Any] = {
    "existingSecret": "desk-gateway-secrets",
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "redis": {"url": "rediss://redis.data.svc:6380/0", "auth": True},
    "accounts": [{"name": "desk-alpha"}, {"name": "desk-beta"}],
    "auth": {"signingKey": "prod-2", "keys": [
        {"kid": "prod-2", "algorithm": "ES256"},
        {"kid": "prod-1", "algorithm": "ES256", "publicOnly": True}]},
    "server": {"trustedProxies": ["10.42.0.0/16"], "publicUrl": "https://gateway.desk.example"},
    "upstream": {"baseUrl": "https://exchange.desk.example"},
    "config": {"logging": {"level": "WARNING"}, "cache": {"ticker_ttl": 0.5},
               "orders": {"pacing": {"rate": 20}}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "ingress": {"enabled": True, "className": "nginx",
                "hosts": [{"host": "gateway.desk.example",
                           "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "gateway-tls", "hosts": ["gateway.desk.example"]}]},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}},
            {"podSelector": {"matchLabels": {"app": "desk-app"}}}],
        "redis": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
                  "port": 6380},
        "exchange": {"cidrs": ["203.0.113.0/24"], "ports": [443]},
    },
}


def value_sets(material: Material) -> dict[str, dict[str, Any]]:
    base = single(material)
    return {
        "default": {},
        "staging": {
            "replicaCount": 1,
            "redis": {"url": ""},
            "simulator": {"enabled": True},
            "users": users(material.secret_hash),
            "auth": {"keys": [{"kid": "stage-1", "privateKey": material.eddsa_pem}]},
            "networkPolicy": {"enabled": True},
        },
        "production": PRODUCTION_EXTRA,
        "issuers": merged(base, auth={
            "keys": [{"kid": "single-1", "privateKey": material.eddsa_pem}],
            "externalIssuers": [
                {"issuer": "https://sso.desk.example/realms/desk",
                 "jwksUrl": "https://sso.desk.example/realms/desk/protocol/openid-connect/certs",
                 "audience": "expie-gateway", "userClaim": "preferred_username",
                 "algorithms": ["RS256", "ES256"], "jwksTtl": 120},
                {"issuer": "https://login.partner.example",
                 "jwksUrl": "https://login.partner.example/.well-known/jwks.json",
                 "audience": "desk-gateway"}]}),
        "single": base,
        "single-rotated-keys": merged(base, auth={"signingKey": "single-2", "keys": [
            {"kid": "single-2", "algorithm": "ES256", "privateKey": material.es256_pem},
            {"kid": "single-1", "publicOnly": True, "publicKey": material.es256_public_pem,
             "algorithm": "ES256"}]}),
        "single-config-changed": merged(base, config={"logging": {"level": "DEBUG"}}),
        "single-secret-changed": merged(
            base, accounts=[{"name": "desk-alpha", "token": ALPHA_TOKEN + "-rotated"}]),
        "single-redis-password": merged(
            base, redis={"url": "redis://redis:6379/0", "password": REDIS_PASSWORD},
            audit={"backend": "auto"},
            accounts=[{"name": "desk-alpha", "token": ALPHA_TOKEN},
                      {"name": "desk-beta", "token": BETA_TOKEN}]),
        "staging-redis-without-persistence": merged(
            base, redis={"url": "redis://redis:6379/0", "requirePersistence": False},
            audit={"backend": "auto"}, config={"audit": {"checkpoint_file": "/archive/cp.json"}}),
        "workers": merged(base, workers=4, redis={"url": "redis://redis:6379/0"},
                          audit={"backend": "auto"}),
        "leadership-tuned": merged(base, workers=2, redis={"url": "redis://redis:6379/0"},
                                   audit={"backend": "auto"},
                                   leadership={"leaseTtl": 6, "renewInterval": 1.5}),
        "long-drain": merged(base, server={"drainDelay": 30, "shutdownTimeout": 45.5}),
        "grace-set": merged(base, terminationGracePeriodSeconds=60),
    }


# name: (values, what the refusal must name)
REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "replicas-without-redis": ({"replicaCount": 2, "redis": {"url": ""}}, "redis.url"),
    "autoscaling-without-redis": (
        {"replicaCount": 1, "autoscaling": {"enabled": True}, "redis": {"url": ""}},
        "redis.url"),
    "file-audit-with-replicas": ({"replicaCount": 2, "audit": {"backend": "file"}},
                                 "audit.backend"),
    "file-audit-with-autoscaling": (
        {"replicaCount": 1, "autoscaling": {"enabled": True}, "audit": {"backend": "file"}},
        "audit.backend"),
    "workers-without-redis": ({"replicaCount": 1, "workers": 2, "redis": {"url": ""}},
                              "workers > 1"),
    "file-audit-with-workers": (
        {"replicaCount": 1, "workers": 2, "audit": {"backend": "file"}}, "workers > 1"),
    "workers-above-64": ({"workers": 65}, "/workers"),
    "workers-zero": ({"workers": 0}, "/workers"),
    "config-sets-workers": ({"config": {"server": {"workers": 4}}}, "use workers"),
    "config-sets-the-cluster": ({"config": {"ws": {"cluster": {"enabled": False}}}},
                                "use leadership"),
    "renewal-slower-than-half-the-lease": (
        {"leadership": {"leaseTtl": 2, "renewInterval": 1.5}}, "leadership.renewInterval"),
    "leadership-ttl-zero": ({"leadership": {"leaseTtl": 0}}, "/leadership/leaseTtl"),
    "wrong-type-top-level": ({"replicaCount": "three"}, "/replicaCount"),
    "wrong-type-nested": ({"server": {"port": "http"}}, "/server/port"),
    "wrong-type-in-list": ({"accounts": [{"name": "desk-alpha", "token": 42}]},
                           "/accounts/0/token"),
    "unknown-top-level-key": ({"replicas": 2}, "replicas"),
    "unknown-nested-key": ({"server": {"drain_delay": 5}}, "drain_delay"),
    "unknown-audit-backend": ({"audit": {"backend": "s3"}}, "/audit/backend"),
    "grace-shorter-than-drain": ({"terminationGracePeriodSeconds": 20},
                                 "terminationGracePeriodSeconds"),
    "config-sets-a-chart-key": ({"config": {"server": {"port": 9090}}}, "config.server.port"),
    "config-sets-require-persistence": (
        {"config": {"redis": {"require_persistence": False}}}, "redis.requirePersistence"),
    "config-sets-the-state-file": (
        {"config": {"orders": {"kill_switch": {"state_file": "/tmp/switches"}}}},
        "config.orders.kill_switch.state_file"),
    "account-without-token": ({"accounts": [{"name": "desk-x"}]}, "accounts[0].token"),
    "password-in-redis-url": ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "redis.url"),
    "redis-auth-without-password": ({"redis": {"auth": True}}, "redis.password"),
    "no-upstream": ({"upstream": {"baseUrl": ""}}, "upstream.baseUrl"),
    "signing-key-unknown": ({"auth": {"signingKey": "nope", "keys": [{"kid": "gw-key-1"}]}},
                            "auth.signingKey"),
    "claim-with-replicas": ({"persistence": {"existingClaim": "gw-state"}},
                            "persistence.existingClaim"),
    "autoscaling-max-below-min": (
        {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}},
        "autoscaling.maxReplicas"),
    "network-policy-without-redis-peers": ({"networkPolicy": {"enabled": True}},
                                           "networkPolicy.redis"),
}
