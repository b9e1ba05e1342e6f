"""Every way a bearer token can be wrong is a 401 that says why, and nothing reaches the exchange.

Each attack is its own test. The answer is RFC 6750: ``WWW-Authenticate: Bearer realm=...,
error="invalid_token", error_description="<why>"`` (no error attribute when there is no token at
all, RFC 6750 §3.1), and the gateway's JSON error whose message says the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.auth.signing import KeyRing, SigningKey, generate_signing_key
from gateway.keys import ACCOUNT_TOKENS, SETTINGS
from gateway.logs import formatter as log_formatter
from tests.clock import FakeClock
from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

TICKER = "/v1/markets/BCCBTC/ticker"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"
# RFC 6750 §3: the characters an error_description may hold.
DESCRIPTION_CHARS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


# --- helpers -----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(gw: RunningGateway, **changes: Any) -> dict[str, Any]:
    """Claims the gateway would accept (for demo-trader), with ``changes`` applied."""
    now = int(gw.clock())
    payload: dict[str, Any] = {
        "iss": gw.settings.auth.issuer, "aud": gw.settings.auth.audience, "sub": "demo-trader",
        "iat": now, "nbf": now, "exp": now + 600, "jti": secrets.token_urlsafe(16),
        "scope": "market:read",
    }
    payload.update(changes)
    return payload


def signed(payload: dict[str, Any], key: SigningKey, kid: str | None = None) -> str:
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm.value,
                      headers={"kid": kid or key.kid, "typ": "JWT"})


def calls_beyond_the_markets_list(stats: dict[str, Any]) -> dict[str, int]:
    """Upstream calls, leaving out the markets list the gateway checks market names against."""
    return {route: count for route, count in stats["rest_requests"].items()
            if route != "GET /v1/markets"}


def challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme, dict(re.findall(r'([a-z_]+)="([^"]*)"', params))


async def assert_refused(
    sim: RunningSimulator, gw: RunningGateway, token: str | None, why: str, *,
    forwarded: dict[str, int] | None = None,
) -> None:
    """A 401 for ``why`` and, upstream, only the requests in ``forwarded`` (default none)."""
    error = "invalid_token"
    status, body, answer = await gw.call("GET", TICKER, token)
    assert status == 401, body
    scheme, params = challenge(answer["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params["realm"] == "expie-gateway"
    assert (params["error"], params["error_description"]) == (error, why)
    assert DESCRIPTION_CHARS.fullmatch(params["error_description"])
    assert body["error"]["code"] == error
    assert why in body["error"]["message"]
    assert body["error"]["request_id"] == answer["X-Request-Id"]
    assert calls_beyond_the_markets_list(await sim.stats()) == (forwarded or {})


async def revoke(gw: RunningGateway, what: dict[str, str]) -> dict[str, Any]:
    status, body, _ = await gw.call("POST", "/admin/tokens/revoke",
                                    gw.token("desk-admin", ["admin"]), json=what)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


# --- the control: hand-made tokens verify when nothing is wrong with them ----------------------


async def test_a_hand_made_token_with_nothing_wrong_is_accepted(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = signed(claims(gw), gw.keyring.signing)
    assert (await gw.call("GET", TICKER, token))[0] == 200
    assert calls_beyond_the_markets_list(await sim.stats()) == {TICKER_ROUTE: 1}


# --- the attacks ------------------------------------------------------------------------------


async def test_no_token_gets_a_challenge_without_an_error_code(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    status, body, headers = await gw.call("GET", TICKER)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="expie-gateway"'
    assert body["error"]["code"] == "unauthenticated"
    assert "missing bearer token" in body["error"]["message"]
    assert body["error"]["request_id"] == headers["X-Request-Id"]
    assert (await sim.stats())["rest_requests"] == {}


@pytest.mark.parametrize("authorization", ["Basic ZGVtbzpzZWNyZXQ=", "Token abc"])
async def test_another_authorization_scheme_gets_a_bare_bearer_challenge(
    sim: RunningSimulator, gw: RunningGateway, authorization: str
) -> None:
    status, body, headers = await gw.call("GET", TICKER,
                                          headers={"Authorization": authorization})
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="expie-gateway"'
    assert body["error"]["code"] == "unauthenticated"
    assert "use Bearer" in body["error"]["message"]
    assert (await sim.stats())["rest_requests"] == {}


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "Bearer a b"])
async def test_a_bearer_header_without_one_token_is_an_invalid_request(
    sim: RunningSimulator, gw: RunningGateway, authorization: str
) -> None:
    status, body, headers = await gw.call("GET", TICKER,
                                          headers={"Authorization": authorization})
    assert status == 400
    scheme, params = challenge(headers["WWW-Authenticate"])
    assert (scheme, params["error"]) == ("Bearer", "invalid_request")
    assert body["error"]["code"] == "invalid_request"
    assert "one token" in body["error"]["message"]
    assert (await sim.stats())["rest_requests"] == {}


@pytest.mark.parametrize("token", [
    "abc",
    "a.b.c",
    "a.b.c.d",
    "!!!.@@@.###",
    f"{segment({'alg': 'EdDSA', 'kid': 'test-key'})}.%%%.sig",
    f"{b64url(b'not json')}.{segment({'sub': 'x'})}.c2ln",
    f"{segment(['kid'])}.{segment({'sub': 'x'})}.c2ln",
    "x" * 8000,
])
async def test_a_malformed_token_is_refused(
    sim: RunningSimulator, gw: RunningGateway, token: str
) -> None:
    await assert_refused(sim, gw, token, "malformed token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(sim: RunningSimulator, gw: RunningGateway, alg: str) -> None:
    header = {"alg": alg, "typ": "JWT", "kid": gw.keyring.signing.kid}
    token = f"{segment(header)}.{segment(claims(gw))}."
    await assert_refused(sim, gw, token, "algorithm not allowed")


async def test_hs256_signed_with_the_public_key_as_hmac_secret_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    public_pem = gw.keyring.signing.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": gw.keyring.signing.kid}
    signing_input = f"{segment(header)}.{segment(claims(gw))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    await assert_refused(sim, gw, f"{signing_input}.{b64url(mac)}", "algorithm not allowed")


async def test_a_token_with_one_byte_of_its_signature_changed_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    head, _, signature = gw.token().rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    await assert_refused(sim, gw, f"{head}.{b64url(bytes(raw))}", "bad signature")


async def test_a_token_signed_by_another_key_with_the_same_kid_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    impostor = generate_signing_key(gw.keyring.signing.kid)
    token = gw.issuer(KeyRing(impostor)).issue("demo-trader", ["market:read"], 600)[0]
    await assert_refused(sim, gw, token, "bad signature")


async def test_an_unknown_kid_is_refused(sim: RunningSimulator, gw: RunningGateway) -> None:
    token = signed(claims(gw), gw.keyring.signing, kid="no-such-key")
    await assert_refused(sim, gw, token, "unknown key id")


async def test_a_token_without_a_kid_is_refused(sim: RunningSimulator, gw: RunningGateway) -> None:
    key = gw.keyring.signing
    token = jwt.encode(claims(gw), key.private_key, algorithm=key.algorithm.value)
    await assert_refused(sim, gw, token, "missing key id")


async def test_an_expired_token_is_refused_once_the_leeway_is_over(
    sim: RunningSimulator, start_gateway_for: StartGateway, clock: FakeClock
) -> None:
    gw = await start_gateway_for(sim, clock=clock)
    token, leeway = gw.token(ttl=60), gw.settings.auth.leeway
    assert (await gw.call("GET", TICKER, token))[0] == 200  # verified once, then cached
    clock.advance(60 + leeway - 1)
    assert (await gw.call("GET", TICKER, token))[0] == 200
    clock.advance(1)
    await assert_refused(sim, gw, token, "token expired", forwarded={TICKER_ROUTE: 2})


async def test_a_token_not_yet_valid_beyond_the_leeway_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    now = int(gw.clock())
    future = now + int(gw.settings.auth.leeway) + 60
    token = signed(claims(gw, iat=now, nbf=future, exp=future + 600), gw.keyring.signing)
    await assert_refused(sim, gw, token, "token not yet valid")


async def test_a_token_from_another_issuer_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = signed(claims(gw, iss="https://evil.example"), gw.keyring.signing)
    await assert_refused(sim, gw, token, "wrong issuer")


@pytest.mark.parametrize("audience", ["another-service", ["another-service", "more"]])
async def test_a_token_for_another_audience_is_refused(
    sim: RunningSimulator, gw: RunningGateway, audience: str | list[str]
) -> None:
    token = signed(claims(gw, aud=audience), gw.keyring.signing)
    await assert_refused(sim, gw, token, "wrong audience")


async def test_a_token_revoked_by_its_jti_is_refused_and_no_other(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token, revoked = gw.issuer().issue("demo-trader", ["market:read"], 600)
    other = gw.token("demo-trader", ["market:read"])
    answer = await revoke(gw, {"jti": revoked.token_id})
    assert answer == {"revoked": {"jti": revoked.token_id}}
    await assert_refused(sim, gw, token, "token revoked")
    assert (await gw.call("GET", TICKER, other))[0] == 200


async def test_revoking_a_user_refuses_the_tokens_issued_before_and_not_after(
    sim: RunningSimulator, start_gateway_for: StartGateway, clock: FakeClock
) -> None:
    gw = await start_gateway_for(sim, clock=clock)
    before = gw.token("demo-trader", ["market:read"])
    bystander = gw.token("beta-trader", ["market:read"])
    assert (await gw.call("GET", TICKER, before))[0] == 200  # verified once, then cached
    answer = await revoke(gw, {"user": "demo-trader"})
    # iat counts whole seconds: the cutoff covers the whole current second.
    assert answer == {"revoked": {"user": "demo-trader", "before": int(clock()) + 1}}
    await assert_refused(sim, gw, before, "token revoked", forwarded={TICKER_ROUTE: 1})
    clock.advance(1)
    after = gw.token("demo-trader", ["market:read"])
    assert (await gw.call("GET", TICKER, after))[0] == 200
    assert (await gw.call("GET", TICKER, bystander))[0] == 200


async def test_a_token_of_a_user_not_in_the_directory_is_refused(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    await assert_refused(sim, gw, gw.token("ghost", ["market:read"]), "unknown user")


# --- the upstream account tokens never leave the gateway --------------------------------------


class Recorder:
    """Calls the gateway and keeps every response body and header value it saw."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.seen: list[str] = []

    async def __call__(self, method: str, path: str, token: str | None = None,
                       **kwargs: Any) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.gw.http.request(method, self.gw.url(path), headers=headers,
                                        **kwargs) as response:
            self.seen.append(await response.text())
            self.seen.extend(f"{name}: {value}" for name, value in response.headers.items())
            return response.status


def logged_text(records: list[logging.LogRecord]) -> list[str]:
    """Each record as every formatter writes it: JSON and text lines with all their fields."""
    formatter = logging.Formatter()
    lines = [log_formatter("json"), log_formatter("text")]
    texts = []
    for record in records:
        texts += [record.getMessage(), str(record.msg), repr(record.args)]
        texts += [line.format(record) for line in lines]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
        texts += [record.exc_text or "", record.stack_info or ""]
    return texts


async def exercise(call: Recorder, gw: RunningGateway, sim: RunningSimulator) -> None:
    """Successes, upstream errors, bad tokens, the token endpoint, admin, public routes."""
    trader, beta, admin = gw.token(), gw.token("beta-trader"), gw.token("desk-admin", ["admin"])
    order = {"side": "1", "amount": "1", "price": "0.2"}
    for token in (trader, beta):
        for path in ("/v1/markets", TICKER, "/v1/balance/summary",
                     "/v1/markets/BCCBTC/orders/_pending", "/v1/balance/history?coin_code=BTC"):
            assert await call("GET", path, token) == 200, path
        assert await call("POST", "/v1/markets/BCCBTC/orders", token, data=order) == 200
    assert await call("POST", "/v1/markets/BCCBTC/orders", trader,
                      data=order | {"amount": "100000"}) == 422
    await call("GET", "/v1/markets/BCCBTC/orders/987654321", trader)  # no such order
    await sim.set_faults(error_rate=1, error_status=503)
    assert await call("GET", "/v1/balance/summary", trader) == 503
    await sim.set_faults(clear=True, latency_ms=1000)
    assert await call("GET", "/v1/balance/summary", trader) == 504
    await sim.set_faults(clear=True)
    other_key = gw.issuer(KeyRing(generate_signing_key("test-key"))).issue("demo-trader", [], 60)
    for bad in (None, "abc", gw.token("ghost"), other_key[0]):
        assert await call("GET", "/v1/balance/summary", bad) == 401
    grant = {"grant_type": "client_credentials", "client_id": "demo-trader",
             "client_secret": "demo-trader-secret-2026"}
    assert await call("POST", "/auth/token", data=grant) == 200
    assert await call("POST", "/auth/token", data=grant | {"client_secret": "wrong"}) == 401
    assert await call("POST", "/admin/tokens/revoke", admin, json={"token": trader}) == 200
    assert await call("POST", "/admin/tokens/revoke", admin, json={"user": "beta-trader"}) == 200
    assert await call("POST", "/admin/tokens/revoke", admin, json={"token": "abc"}) == 400
    for path in ("/.well-known/jwks.json", "/healthz", "/readyz"):
        assert await call("GET", path) == 200
    assert await call("GET", "/v2/nothing", admin) == 404
    await sim.server.close()
    # 502 names the failed connection; 503 once the circuit breaker has opened on the failures.
    assert await call("GET", "/v1/balance/summary", gw.token()) in (502, 503)


async def test_upstream_account_tokens_appear_in_no_log_response_or_repr(
    sim: RunningSimulator, start_gateway_for: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = gateway_settings(sim)
    settings = dataclasses.replace(settings, upstream=dataclasses.replace(
        settings.upstream, total_timeout=0.3))
    gw = await start_gateway_for(sim, settings=settings)
    call = Recorder(gw)
    await exercise(call, gw, sim)

    app = gw.server.app
    secrets_held = app[ACCOUNT_TOKENS]
    texts = [*call.seen, *logged_text(caplog.records), caplog.text,
             repr(secrets_held), str(secrets_held), repr(app[SETTINGS]), repr(gw.settings)]
    texts += [f"{secret!r} {secret} {secret!s}" for secret in secrets_held.values()]
    assert caplog.records, "nothing was logged: the capture is not looking"
    assert {secret.reveal() for secret in secrets_held.values()} == {
        account.token for account in sim.config.accounts}
    for account in sim.config.accounts:
        leaks = [text for text in texts if account.token in text]
        assert not leaks, f"the token of {account.name} leaked: {leaks[0][:200]}"
