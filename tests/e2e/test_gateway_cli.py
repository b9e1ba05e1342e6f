"""``expie-gateway`` as an operator runs it: the real command in a subprocess, files in a tmp dir.

Every run is bounded by a timeout; the one server (``serve``) listens on a free loopback port and
is stopped by its PID. The revocation test needs the real Redis at REDIS_URL: it FAILS under
``CI=true`` when Redis does not answer and is skipped elsewhere (as the component tier does).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import redis.asyncio
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.auth.passwords import verify_secret
from gateway.stores.revocation import RedisRevocationStore
from tests.process_harness import ROOT, RUN_TIMEOUT, cli, free_port, health, serving

USERS_FILE = ROOT / "config" / "users.example.yaml"
EXAMPLE_USERS = {
    "demo-trader": "balance:read market:read orders:read orders:write",
    "pricing-bot": "market:read",
    "desk-admin": "admin balance:read market:read orders:read orders:write",
    "beta-trader": "balance:read market:read orders:read orders:write",
    "reporting-job": "balance:read orders:desk orders:read",
}


@dataclass(frozen=True)
class Deployment:
    """A configuration in a tmp dir: a generated key, account tokens in files, example users."""

    directory: Path
    config: Path
    key: Path

    def write(self, **sections: object) -> Path:
        """The config with ``sections`` replaced (or added); returns its path."""
        data = {**yaml.safe_load(self.config.read_text(encoding="utf-8")), **sections}
        path = self.directory / f"gateway-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    def public_key(self) -> ed25519.Ed25519PublicKey:
        private = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        return private.public_key()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("deployment")
    key = directory / "k1.pem"
    done = cli("keys", "generate", "--kid", "k1", "--out", key)
    assert done.returncode == 0, done.stderr
    accounts = []
    for name in ("desk-alpha", "desk-beta"):
        (directory / name).write_text(f"upstream-token-of-{name}\n", encoding="utf-8")
        accounts.append({"name": name, "token_file": str(directory / name)})
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 8080},
        "upstream": {"base_url": "http://127.0.0.1:9"},
        "auth": {"signing_key": "k1", "keys": [
            {"kid": "k1", "algorithm": "EdDSA", "private_key_file": str(key)}]},
        "users": {"file": str(USERS_FILE)},
        "accounts": accounts,
        # Without it the audit file is var/audit.jsonl under the repository (serve's cwd).
        "audit": {"file": str(directory / "audit.jsonl")},
    }), encoding="utf-8")
    return Deployment(directory, config, key)


# --- check-config ---------------------------------------------------------------------------------


def test_check_config_accepts_a_valid_configuration(deployment: Deployment) -> None:
    done = cli("check-config", "--config", deployment.config)
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout
    assert "2 accounts, 5 users, 1 keys, redis off" in done.stdout


def test_check_config_names_an_unknown_key(deployment: Deployment) -> None:
    config = deployment.write(logging={"level": "INFO", "colour": True})
    done = cli("check-config", "--config", config)
    assert done.returncode == 2
    assert "logging.colour" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_names_an_unknown_override(deployment: Deployment) -> None:
    done = cli("check-config", "--config", deployment.config, env={"EXPIE_GW_AUTH__NOPE": "1"})
    assert done.returncode == 2
    assert "auth.nope" in done.stderr
    assert "EXPIE_GW_AUTH__NOPE" in done.stderr


def test_check_config_names_the_account_whose_secret_is_missing(deployment: Deployment) -> None:
    config = deployment.write(accounts=[
        {"name": "desk-alpha", "token_file": str(deployment.directory / "desk-alpha")},
        {"name": "desk-beta", "token_file": str(deployment.directory / "no-such-file")},
    ])
    done = cli("check-config", "--config", config)
    assert done.returncode == 2
    assert "desk-beta" in done.stderr
    assert "upstream-token-of" not in done.stderr + done.stdout


def test_the_config_file_can_come_from_the_environment(deployment: Deployment) -> None:
    done = cli("check-config", env={"EXPIE_GW_CONFIG": str(deployment.config)})
    assert done.returncode == 0, done.stderr
    assert f"{deployment.config}: ok" in done.stdout


def test_a_missing_config_file_is_a_configuration_error(deployment: Deployment) -> None:
    done = cli("check-config", "--config", deployment.directory / "absent.yaml")
    assert done.returncode == 2
    assert "absent.yaml" in done.stderr


# --- users ---------------------------------------------------------------------------------------


def test_users_list_shows_each_example_user_with_scopes(deployment: Deployment) -> None:
    done = cli("users", "list", "--config", deployment.config)
    assert done.returncode == 0, done.stderr
    rows = {line.split("\t")[0]: line for line in done.stdout.splitlines()}
    assert set(rows) == set(EXAMPLE_USERS)
    for user, scopes in EXAMPLE_USERS.items():
        assert f"scopes={scopes}" in rows[user]
    assert "markets=BCCBTC,BTGBTC" in rows["pricing-bot"]
    assert "secret=no" in rows["reporting-job"]
    assert "scrypt$" not in done.stdout


def test_hash_secret_hashes_the_secret_read_from_stdin() -> None:
    secret = "a-client-secret-long-enough"
    done = cli("users", "hash-secret", stdin=f"{secret}\n")
    assert done.returncode == 0, done.stderr
    encoded = done.stdout.strip()
    assert verify_secret(secret, encoded)
    assert not verify_secret(secret + "x", encoded)
    assert secret not in done.stdout + done.stderr


def test_hash_secret_generate_prints_the_secret_once_on_stderr() -> None:
    done = cli("users", "hash-secret", "--generate")
    assert done.returncode == 0, done.stderr
    secret = done.stderr.strip().rpartition(": ")[2]
    assert len(secret) >= 16
    assert verify_secret(secret, done.stdout.strip())
    assert secret not in done.stdout


def test_hash_secret_refuses_a_short_secret() -> None:
    done = cli("users", "hash-secret", stdin="short\n")
    assert done.returncode == 1
    assert "16 characters" in done.stderr
    assert done.stdout == ""


# --- token issue ---------------------------------------------------------------------------------


def test_token_issue_prints_a_token_the_key_verifies(deployment: Deployment) -> None:
    done = cli("token", "issue", "--config", deployment.config, "--user", "demo-trader",
               "--ttl", "15m", "--scope", "market:read")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    claims = jwt.decode(token, deployment.public_key(), algorithms=["EdDSA"],
                        audience="expie-gateway", issuer="expie-gateway")
    assert claims["sub"] == "demo-trader"
    assert claims["scope"] == "market:read"
    assert claims["exp"] - claims["iat"] == 900
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert claims["jti"] in done.stderr


def test_token_issue_grants_every_scope_of_the_user_by_default(deployment: Deployment) -> None:
    done = cli("token", "issue", "--config", deployment.config, "--user", "reporting-job")
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), options={"verify_signature": False})
    assert claims["scope"] == EXAMPLE_USERS["reporting-job"]
    assert claims["exp"] - claims["iat"] == 900


def test_token_issue_refuses_a_scope_the_user_does_not_hold(deployment: Deployment) -> None:
    done = cli("token", "issue", "--config", deployment.config, "--user", "demo-trader",
               "--scope", "admin")
    assert done.returncode == 1
    assert "admin" in done.stderr
    assert done.stdout == ""


def test_token_issue_refuses_an_unknown_user(deployment: Deployment) -> None:
    done = cli("token", "issue", "--config", deployment.config, "--user", "mallory")
    assert done.returncode == 1
    assert "mallory" in done.stderr
    assert done.stdout == ""


def test_token_issue_refuses_a_ttl_beyond_the_maximum(deployment: Deployment) -> None:
    done = cli("token", "issue", "--config", deployment.config, "--user", "demo-trader",
               "--ttl", "2d")
    assert done.returncode == 1
    assert "max_token_ttl" in done.stderr


# --- token revoke --------------------------------------------------------------------------------


def test_token_revoke_without_redis_points_to_the_admin_endpoint(deployment: Deployment) -> None:
    done = cli("token", "revoke", "--config", deployment.config, "--jti", "X")
    assert done.returncode == 1
    assert "POST /admin/tokens/revoke" in done.stderr


@pytest.mark.redis
async def test_token_revoke_writes_the_revocation_to_redis(
    deployment: Deployment, redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    env = {"EXPIE_GW_REDIS__URL": redis_url, "EXPIE_GW_REDIS__KEY_PREFIX": key_prefix}
    by_jti = await asyncio.to_thread(
        cli, "token", "revoke", "--config", deployment.config, "--jti", "jti-to-refuse", env=env)
    assert by_jti.returncode == 0, by_jti.stderr
    assert "jti-to-refuse" in by_jti.stdout
    by_user = await asyncio.to_thread(
        cli, "token", "revoke", "--config", deployment.config, "--user", "pricing-bot", env=env)
    assert by_user.returncode == 0, by_user.stderr

    store = RedisRevocationStore(redis_client, key_prefix)
    await store.start()
    try:
        now = time.time()
        assert store.is_revoked("jti-to-refuse", "demo-trader", now - 10)
        assert not store.is_revoked("another-jti", "demo-trader", now - 10)
        assert store.is_revoked("another-jti", "pricing-bot", now - 10)
        assert not store.is_revoked("another-jti", "pricing-bot", now + 10)
    finally:
        await store.close()


# --- keys generate -------------------------------------------------------------------------------


def test_keys_generate_refuses_to_overwrite_a_file(tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    out.write_text("precious\n", encoding="utf-8")
    done = cli("keys", "generate", "--kid", "k2", "--out", out)
    assert done.returncode == 1
    assert str(out) in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_text(encoding="utf-8") == "precious\n"


def test_keys_generate_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    done = cli("keys", "generate", "--kid", "k2", "--algorithm", "ES256", "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert out.stat().st_mode & 0o077 == 0
    assert b"PRIVATE" not in done.stdout.encode()


def test_keys_generate_refuses_a_bad_kid(tmp_path: Path) -> None:
    done = cli("keys", "generate", "--kid", "not a kid", "--out", tmp_path / "key.pem")
    assert done.returncode == 1
    assert "--kid" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "key.pem").exists()


# --- serve ---------------------------------------------------------------------------------------


def test_serve_answers_healthz_and_stops_on_sigterm(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    config = deployment.write(audit={"file": str(tmp_path / "audit.jsonl")})
    with serving(config, port) as process:
        assert health(port) == {"status": "ok"}
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=RUN_TIMEOUT) == 0
        assert health(port, attempts=1) is None


def test_serve_refuses_a_bad_configuration(deployment: Deployment, tmp_path: Path) -> None:
    port = free_port()
    config = deployment.write(upstream={"base_url": "127.0.0.1:8081"},
                              audit={"file": str(tmp_path / "audit.jsonl")})
    with serving(config, port) as process:
        _, errors = process.communicate(timeout=RUN_TIMEOUT)
        assert process.returncode == 2
        assert b"upstream.base_url" in errors


def test_serve_says_where_it_listens(deployment: Deployment, tmp_path: Path) -> None:
    port = free_port()
    config = deployment.write(audit={"file": str(tmp_path / "audit.jsonl")})
    with serving(config, port) as process:
        assert health(port) == {"status": "ok"}
        os.kill(process.pid, signal.SIGTERM)
        _, errors = process.communicate(timeout=RUN_TIMEOUT)
    assert f"listening on http://127.0.0.1:{port}".encode() in errors


def test_serve_on_a_port_in_use_says_so_in_one_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    config = deployment.write(audit={"file": str(tmp_path / "audit.jsonl")})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with serving(config, port) as process:
            _, errors = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 1
    assert "Traceback" not in errors.decode()
    assert (f"expie-gateway: cannot listen on 127.0.0.1:{port}: the address is in use"
            in errors.decode().splitlines())


def test_serve_refuses_a_port_out_of_range(deployment: Deployment, tmp_path: Path) -> None:
    config = deployment.write(audit={"file": str(tmp_path / "audit.jsonl")})
    done = cli("serve", "--config", config, env={"EXPIE_GW_SERVER__PORT": "99999"})
    assert done.returncode == 2
    assert "server.port: expected an integer from 1 to 65535" in done.stderr
    assert "EXPIE_GW_SERVER__PORT" in done.stderr
