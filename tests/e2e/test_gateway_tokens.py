"""Where gateway tokens come from and how they stay trustworthy: the client-credentials grant,
the JWK Set, key rotation, revocation shared by replicas through Redis, and health.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.credentials import load_keyring
from gateway.auth.signing import (
    Algorithm,
    KeyRing,
    SigningKey,
    generate_signing_key,
    private_pem,
)
from gateway.settings import KeySettings, RedisSettings, SecretRef
from tests.conftest import StartGateway
from tests.e2e.conftest import FakeClock
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
SECRETS = {
    "demo-trader": "demo-trader-secret-2026",
    "pricing-bot": "pricing-bot-secret-2026",
}
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}
REVOCATION_BOUND = 1.0  # seconds: every replica refuses a revoked token within this


# --- POST /auth/token (RFC 6749 §4.4, errors §5.2) ---------------------------------------------


def basic(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def form(client_id: str | None = None, scope: str | None = None,
         grant_type: str | None = "client_credentials") -> dict[str, str]:
    fields = {"grant_type": grant_type, "scope": scope}
    if client_id is not None:
        fields |= {"client_id": client_id, "client_secret": SECRETS[client_id]}
    return {name: value for name, value in fields.items() if value is not None}


async def token_request(gw: RunningGateway, **kwargs: Any) -> tuple[int, Any, Any]:
    status, body, headers = await gw.call("POST", "/auth/token", **kwargs)
    assert headers["Cache-Control"] == "no-store"
    return status, body, headers


def assert_oauth_error(status: int, body: Any, expected_status: int, error: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert body["error_description"]


async def test_a_client_gets_a_working_token_with_its_secret_in_the_form(
    gw: RunningGateway,
) -> None:
    status, body, headers = await token_request(gw, data=form("demo-trader"))
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert type(body["expires_in"]) is int
    assert body["expires_in"] == gw.settings.auth.token_ttl
    assert body["scope"] == "balance:read market:read orders:read orders:write"
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == (
        "demo-trader")
    assert (await gw.call("GET", TICKER, body["access_token"]))[0] == 200


async def test_a_client_gets_a_token_with_http_basic(gw: RunningGateway) -> None:
    status, body, _ = await token_request(
        gw, data=form(), headers=basic("pricing-bot", SECRETS["pricing-bot"]))
    assert (status, body["scope"]) == (200, "market:read")
    assert (await gw.call("GET", "/v1/markets/BTGBTC/ticker", body["access_token"]))[0] == 200


async def test_basic_and_form_credentials_together_are_an_invalid_request(
    gw: RunningGateway,
) -> None:
    status, body, _ = await token_request(
        gw, data=form("demo-trader"), headers=basic("demo-trader", SECRETS["demo-trader"]))
    assert_oauth_error(status, body, 400, "invalid_request")


@pytest.mark.parametrize(("headers", "error", "status"), [
    ({}, "invalid_client", 401),
    ({"Authorization": "Basic not-base64!"}, "invalid_request", 400),
    ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "invalid_request", 400),
])
async def test_missing_or_malformed_client_authentication_is_refused(
    gw: RunningGateway, headers: dict[str, str], error: str, status: int
) -> None:
    answer = await token_request(gw, data=form(), headers=headers)
    assert_oauth_error(answer[0], answer[1], status, error)


@pytest.mark.parametrize("via_basic", [True, False])
async def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(
    gw: RunningGateway, via_basic: bool
) -> None:
    if via_basic:
        answer = await token_request(gw, data=form(), headers=basic("demo-trader", "wrong"))
    else:
        fields = form() | {"client_id": "demo-trader", "client_secret": "wrong"}
        answer = await token_request(gw, data=fields)
    status, body, headers = answer
    assert_oauth_error(status, body, 401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic ")


async def test_an_unknown_client_gets_the_same_answer_as_a_wrong_secret(
    gw: RunningGateway,
) -> None:
    unknown = await token_request(gw, data=form(), headers=basic("nobody", "whatever"))
    wrong = await token_request(gw, data=form(), headers=basic("demo-trader", "whatever"))
    assert_oauth_error(unknown[0], unknown[1], 401, "invalid_client")
    assert (unknown[0], unknown[1]) == (wrong[0], wrong[1])
    assert unknown[2]["WWW-Authenticate"] == wrong[2]["WWW-Authenticate"]


async def test_a_user_without_a_secret_cannot_use_the_grant(gw: RunningGateway) -> None:
    status, body, _ = await token_request(gw, data=form(), headers=basic("reporting-job", "x"))
    assert_oauth_error(status, body, 401, "invalid_client")


@pytest.mark.parametrize("grant_type", [None, "password", "authorization_code", ""])
async def test_other_grant_types_are_unsupported(
    gw: RunningGateway, grant_type: str | None
) -> None:
    status, body, _ = await token_request(gw, data=form("demo-trader", grant_type=grant_type))
    assert_oauth_error(status, body, 400, "unsupported_grant_type")


async def test_a_json_body_is_an_invalid_request(gw: RunningGateway) -> None:
    status, body, _ = await token_request(gw, json=form("demo-trader"))
    assert_oauth_error(status, body, 400, "invalid_request")


async def test_a_client_may_ask_for_a_subset_of_its_scopes_and_gets_exactly_that(
    gw: RunningGateway,
) -> None:
    status, body, _ = await token_request(gw, data=form("demo-trader", "orders:read market:read"))
    assert (status, body["scope"]) == (200, "market:read orders:read")
    token = body["access_token"]
    assert (await gw.call("GET", TICKER, token))[0] == 200
    assert (await gw.call("GET", "/v1/markets/BCCBTC/orders/_pending", token))[0] == 200
    status, refused, _ = await gw.call("GET", "/v1/balance/summary", token)
    assert (status, refused["error"]["code"]) == (403, "insufficient_scope")
    status, refused, _ = await gw.call("POST", "/v1/markets/BCCBTC/orders", token,
                                       data={"side": "1", "amount": "1", "price": "0.2"})
    assert (status, refused["error"]["code"]) == (403, "insufficient_scope")


@pytest.mark.parametrize("scope", ["admin", "market:read admin", "no:such-scope"])
async def test_asking_for_a_scope_the_client_lacks_is_invalid_scope(
    gw: RunningGateway, scope: str
) -> None:
    status, body, _ = await token_request(gw, data=form("pricing-bot", scope))
    assert_oauth_error(status, body, 400, "invalid_scope")


# --- GET /.well-known/jwks.json and key rotation -------------------------------------------------


async def test_the_jwks_publishes_only_public_keys_that_verify_our_tokens(
    sim: RunningSimulator, start_gateway_for: StartGateway
) -> None:
    rsa_key = SigningKey("rsa-1", Algorithm.RS256,
                         rsa.generate_private_key(public_exponent=65537, key_size=2048))
    others = [generate_signing_key("ec-1", Algorithm.ES256), generate_signing_key("ed-1")]
    gw = await start_gateway_for(sim, keyring=KeyRing(rsa_key, [k.public() for k in others]))
    status, body, headers = await gw.call("GET", "/.well-known/jwks.json")
    assert status == 200
    assert headers["Content-Type"].split(";")[0] in {"application/json",
                                                     "application/jwk-set+json"}
    assert set(body) == {"keys"}
    assert [(key["kid"], key["kty"], key["alg"]) for key in body["keys"]] == [
        ("rsa-1", "RSA", "RS256"), ("ec-1", "EC", "ES256"), ("ed-1", "OKP", "EdDSA")]
    for key in body["keys"]:
        assert key["use"] == "sig"
        assert not PRIVATE_JWK_MEMBERS & set(key), key["kid"]
    published = jwt.PyJWKSet.from_dict(body)
    token = gw.token()
    claims = jwt.decode(token, published["rsa-1"], algorithms=["RS256"],
                        audience=gw.settings.auth.audience)
    assert claims["sub"] == "demo-trader"
    assert (await sim.stats())["rest_requests"] == {}


def rotation_settings(sim: RunningSimulator, signing: str, keys: list[KeySettings]) -> Any:
    settings = gateway_settings(sim)
    auth = dataclasses.replace(settings.auth, signing_key=signing, keys=tuple(keys))
    return dataclasses.replace(settings, auth=auth)


async def test_a_token_of_the_previous_key_verifies_while_that_key_is_kept(
    sim: RunningSimulator, start_gateway_for: StartGateway, tmp_path: Path
) -> None:
    key1, key2 = generate_signing_key("key-1"), generate_signing_key("key-2")
    (tmp_path / "key-1.pem").write_bytes(private_pem(key1))
    (tmp_path / "key-2.pem").write_bytes(private_pem(key2))
    (tmp_path / "key-1.pub.pem").write_bytes(key1.public().public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def key(kid: str, *, private: str | None = None, public: str | None = None) -> KeySettings:
        return KeySettings(kid, "EdDSA", SecretRef(file=tmp_path / private) if private else None,
                           SecretRef(file=tmp_path / public) if public else None)

    first = rotation_settings(sim, "key-1", [key("key-1", private="key-1.pem")])
    a = await start_gateway_for(sim, settings=first, keyring=load_keyring(first.auth))
    old = a.token(scopes=["market:read"])
    assert (await a.call("GET", TICKER, old))[0] == 200
    await a.server.close()  # the restart, with the new key signing and the old one kept

    rotated = rotation_settings(sim, "key-2", [key("key-2", private="key-2.pem"),
                                               key("key-1", public="key-1.pub.pem")])
    b = await start_gateway_for(sim, settings=rotated, keyring=load_keyring(rotated.auth))
    new = b.token(scopes=["market:read"])
    assert jwt.get_unverified_header(new)["kid"] == "key-2"
    assert (await b.call("GET", TICKER, old))[0] == 200
    assert (await b.call("GET", TICKER, new))[0] == 200
    _, jwks, _ = await b.call("GET", "/.well-known/jwks.json")
    assert [jwk["kid"] for jwk in jwks["keys"]] == ["key-2", "key-1"]
    assert not PRIVATE_JWK_MEMBERS & {name for jwk in jwks["keys"] for name in jwk}

    retired = rotation_settings(sim, "key-2", [key("key-2", private="key-2.pem")])
    c = await start_gateway_for(sim, settings=retired, keyring=load_keyring(retired.auth))
    status, body, headers = await c.call("GET", TICKER, old)
    assert status == 401
    assert 'error_description="unknown key id"' in headers["WWW-Authenticate"]
    assert body["error"]["message"] == "unknown key id"
    assert (await c.call("GET", TICKER, new))[0] == 200


# --- revocation shared by replicas through Redis ----------------------------------------------


async def refused_within(gw: RunningGateway, token: str, bound: float) -> dict[str, Any]:
    """Poll ``gw`` with ``token`` until it is refused; fail if that takes longer than ``bound``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        status, body, _ = await gw.call("GET", TICKER, token)
        if status == 401:
            return body  # type: ignore[no-any-return]
        assert status == 200, body
        assert loop.time() < deadline, f"still accepted {bound} s after the revocation"
        await asyncio.sleep(0.02)


async def admin_revoke(gw: RunningGateway, what: dict[str, str]) -> None:
    status, body, _ = await gw.call("POST", "/admin/tokens/revoke",
                                    gw.token("desk-admin", ["admin"]), json=what)
    assert status == 200, body


@pytest.mark.redis
async def test_a_revocation_on_one_replica_is_enforced_by_another_within_a_second(
    redis_client: redis.asyncio.Redis, key_prefix: str, redis_url: str, sim: RunningSimulator,
    start_gateway_for: StartGateway, clock: FakeClock,
) -> None:
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix, revocation_sync_interval=0.1)
    keyring = KeyRing(generate_signing_key("shared-key"))
    a, b = [await start_gateway_for(sim, keyring=keyring, redis=shared, clock=clock)
            for _ in range(2)]
    status, ready, _ = await b.call("GET", "/readyz")
    assert (status, ready["dependencies"]["revocation_store"]) == (200, "ok")
    token, claims = a.issuer().issue("demo-trader", ["market:read"], 600)
    by_user = a.token("beta-trader", ["market:read"])
    for replica in (a, b):  # both have verified (and cached) both tokens
        assert (await replica.call("GET", TICKER, token))[0] == 200
        assert (await replica.call("GET", TICKER, by_user))[0] == 200

    await admin_revoke(a, {"jti": claims.token_id})
    refused = await refused_within(b, token, REVOCATION_BOUND)
    assert refused["error"]["message"] == "token revoked"

    await admin_revoke(a, {"user": "beta-trader"})
    refused = await refused_within(b, by_user, REVOCATION_BOUND)
    assert refused["error"]["message"] == "token revoked"
    clock.advance(1)
    assert (await b.call("GET", TICKER, a.token("beta-trader", ["market:read"])))[0] == 200
    assert await redis_client.exists(f"{key_prefix}revoked:tokens", f"{key_prefix}revoked:users")


# --- /healthz and /readyz ---------------------------------------------------------------------


async def test_a_healthy_gateway_is_alive_and_ready(gw: RunningGateway) -> None:
    assert (await gw.call("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await gw.call("GET", "/readyz")
    assert (status, body) == (200, {"status": "ready", "dependencies": {
        "revocation_store": "ok", "kill_switch_store": "ok", "upstream_circuit": "closed",
        "shared_state": "ok"},
        "audit_spool": {"pending": 0, "dropped": 0},
        "settlement_spool": {"pending": 0, "dropped": 0}})


async def test_a_gateway_whose_redis_is_unreachable_stays_ready_and_serves_market_data(
    sim: RunningSimulator, start_gateway_for: StartGateway, unused_tcp_port: int
) -> None:
    nowhere = RedisSettings(url=f"redis://127.0.0.1:{unused_tcp_port}/0",
                            key_prefix=f"test:{uuid.uuid4().hex}:")
    gw = await start_gateway_for(sim, redis=nowhere)
    assert (await gw.call("GET", "/healthz"))[0] == 200
    status, body, _ = await gw.call("GET", "/readyz")
    assert (status, body["status"]) == (200, "ready")
    assert body["dependencies"] == {"revocation_store": "unavailable",
                                    "kill_switch_store": "unavailable",
                                    "upstream_circuit": "closed",
                                    "shared_state": "unchecked"}
    status, body, _ = await gw.call("POST", "/admin/tokens/revoke",
                                    gw.token("desk-admin", ["admin"]), json={"jti": "some-id"})
    assert (status, body["error"]["code"]) == (503, "store_unavailable")
    status, _, _ = await gw.call("GET", TICKER, gw.token("demo-trader", ["market:read"]))
    assert status == 200
    status, body, _ = await gw.call(
        "POST", "/v1/markets/BCCBTC/orders", gw.token("demo-trader", ["orders:write"]),
        data={"side": "2", "amount": "1", "price": "0.13"})
    assert (status, body["error"]["code"]) == (503, "kill_switch_unavailable")
