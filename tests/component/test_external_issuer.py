"""Trusted external issuers: a JWKS served by a local test server, fetched lazily, cached for its
TTL, refetched once (single-flight) on an unknown kid, and refused clearly when unavailable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth.external import (
    UNKNOWN_KID_REFETCH_INTERVAL,
    ExternalIssuer,
    ExternalIssuers,
    JwksUnavailable,
    parse_jwks,
)
from gateway.auth.signing import Algorithm, KeyRing, SigningKey, generate_signing_key
from gateway.auth.tokens import InvalidToken, TokenClaims, TokenIssuer, TokenVerifier
from tests.clock import FakeClock

ISSUER = "https://gateway.test"
AUDIENCE = "expie-gateway"
SSO = "https://sso.test/realms/expie"
SSO_AUDIENCE = "expie-gateway-sso"
START = 1_700_000_000.0
TTL = 300.0




@dataclass
class JwksServer:
    """A JWKS endpoint that counts its requests; ``keys`` and ``status`` can change mid-test."""

    keys: list[dict[str, str]]
    status: int = 200
    requests: int = 0
    server: TestServer | None = field(default=None, repr=False)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response({"keys": self.keys})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks"))


@dataclass
class World:
    clock: FakeClock
    jwks: JwksServer
    external: ExternalIssuers
    verifier: TokenVerifier
    local: TokenIssuer


@pytest.fixture(scope="module")
def sso_keys() -> dict[str, SigningKey]:
    return {
        "ed-1": generate_signing_key("ed-1", Algorithm.EDDSA),
        "ed-2": generate_signing_key("ed-2", Algorithm.EDDSA),
        "ec-1": generate_signing_key("ec-1", Algorithm.ES256),
        "rsa-1": generate_signing_key("rsa-1", Algorithm.RS256),
    }


def _jwk(key: SigningKey) -> dict[str, str]:
    return key.public().jwk()


def _sso_token(key: SigningKey, clock: FakeClock, **claims: object) -> str:
    now = int(clock())
    payload: dict[str, object] = {
        "iss": SSO, "aud": SSO_AUDIENCE, "sub": "f81d4fae-7dec", "email": "alice@example.com",
        "iat": now, "exp": now + 600, "scope": "market:read orders:read",
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm.value,
                      headers={"kid": key.kid})


MakeWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(sso_keys: dict[str, SigningKey]) -> AsyncIterator[MakeWorld]:
    """Start a JWKS server and build a verifier trusting it; everything is closed after."""
    started: list[tuple[TestServer, ExternalIssuers]] = []

    async def make(keys: list[str] | None = None, algorithms: tuple[str, ...] | None = None,
                   url: str | None = None) -> World:
        clock = FakeClock()
        jwks = JwksServer([_jwk(sso_keys[kid]) for kid in keys or ["ed-1"]])
        app = web.Application()
        app.router.add_get("/jwks", jwks.handle)
        jwks.server = TestServer(app, host="127.0.0.1")
        await jwks.server.start_server()
        settings = ExternalIssuer(
            issuer=SSO, jwks_url=url or jwks.url, user_claim="email", audience=SSO_AUDIENCE,
            jwks_ttl=TTL, **({"algorithms": algorithms} if algorithms else {}))
        external = ExternalIssuers([settings], aiohttp.ClientSession, clock)
        started.append((jwks.server, external))
        ring = KeyRing(generate_signing_key("gw-1"))
        verifier = TokenVerifier(ring, ISSUER, AUDIENCE, 5.0, clock, external=external)
        return World(clock, jwks, external, verifier, TokenIssuer(ring, ISSUER, AUDIENCE, clock))

    yield make
    for server, external in started:
        await external.close()
        await server.close()


async def _refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return caught.value.reason


async def test_an_sso_token_verifies_with_the_user_from_the_configured_claim(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock, jti="sso-42")
    assert await world.verifier.verify(token) == TokenClaims(
        issuer=SSO, audience=SSO_AUDIENCE, subject="alice@example.com", issued_at=START,
        not_before=START, expires_at=START + 600, token_id="sso-42",
        scopes=frozenset({"market:read", "orders:read"}))


async def test_the_jwks_is_fetched_lazily_once_and_not_for_our_own_tokens(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    own, _ = world.local.issue("bob", ["admin"], 600)
    assert (await world.verifier.verify(own)).subject == "bob"
    assert world.jwks.requests == 0
    for user in ("a@x", "b@x", "c@x"):
        token = _sso_token(sso_keys["ed-1"], world.clock, email=user)
        assert (await world.verifier.verify(token)).subject == user
    assert world.jwks.requests == 1


async def test_the_jwks_is_cached_for_its_ttl_then_refreshed(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock, email="a@x"))
    world.clock.advance(TTL - 1)
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock, email="b@x"))
    assert world.jwks.requests == 1
    world.clock.advance(1)
    # Stale now: the known kid is served from the stale set while a refresh runs behind it.
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock, email="c@x"))
    await world.external.wait_idle()
    assert world.jwks.requests == 2
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock, email="d@x"))
    assert world.jwks.requests == 2


async def test_a_key_removed_from_the_jwks_is_refused_after_the_refresh(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world(keys=["ed-1", "ed-2"])
    token = _sso_token(sso_keys["ed-1"], world.clock)
    await world.verifier.verify(token)
    world.jwks.keys = [_jwk(sso_keys["ed-2"])]
    world.clock.advance(TTL)
    await world.verifier.verify(token)  # a cache entry of an SSO token expires with the JWKS
    await world.external.wait_idle()
    assert world.jwks.requests == 2
    assert await _refused(world.verifier, token) == "unknown key id"


async def test_an_unknown_kid_triggers_one_refetch(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock))
    world.jwks.keys.append(_jwk(sso_keys["ed-2"]))  # the provider rotates in a new key
    rotated = _sso_token(sso_keys["ed-2"], world.clock)
    assert (await world.verifier.verify(rotated)).subject == "alice@example.com"
    assert world.jwks.requests == 2


async def test_unknown_kids_do_not_refetch_more_often_than_the_interval(
    make_world: MakeWorld,
) -> None:
    world = await make_world()
    stranger = generate_signing_key("nobody-knows")
    for _ in range(5):
        assert await _refused(world.verifier, _sso_token(stranger, world.clock)) == (
            "unknown key id")
    assert world.jwks.requests == 2  # the first use, then one refetch for the unknown kid
    world.clock.advance(UNKNOWN_KID_REFETCH_INTERVAL)
    assert await _refused(world.verifier, _sso_token(stranger, world.clock)) == "unknown key id"
    assert world.jwks.requests == 3


async def test_concurrent_first_uses_share_one_fetch(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    tokens = [_sso_token(sso_keys["ed-1"], world.clock, email=f"u{i}@x") for i in range(20)]
    results = await asyncio.gather(*(world.verifier.verify(token) for token in tokens))
    assert [claims.subject for claims in results] == [f"u{i}@x" for i in range(20)]
    assert world.jwks.requests == 1


async def test_concurrent_unknown_kids_share_one_refetch(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock))
    world.jwks.keys.append(_jwk(sso_keys["ed-2"]))
    tokens = [_sso_token(sso_keys["ed-2"], world.clock, email=f"u{i}@x") for i in range(20)]
    results = await asyncio.gather(*(world.verifier.verify(token) for token in tokens))
    assert len({claims.subject for claims in results}) == 20
    assert world.jwks.requests == 2


async def test_concurrent_made_up_kids_share_one_refetch_and_are_refused(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock))
    strangers = [_sso_token(generate_signing_key(f"made-up-{i}"), world.clock) for i in range(20)]
    outcomes = await asyncio.gather(
        *(world.verifier.verify(token) for token in strangers), return_exceptions=True)
    assert all(isinstance(outcome, InvalidToken) for outcome in outcomes)
    assert {outcome.reason for outcome in outcomes if isinstance(outcome, InvalidToken)} == {
        "unknown key id"}
    assert world.jwks.requests == 2


async def test_a_server_that_is_down_makes_a_clear_refusal(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    assert world.jwks.server is not None
    await world.jwks.server.close()
    token = _sso_token(sso_keys["ed-1"], world.clock)
    assert await _refused(world.verifier, token) == "issuer keys unavailable"


async def test_an_error_status_is_refused_then_retried_after_the_interval(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    world.jwks.status = 503
    token = _sso_token(sso_keys["ed-1"], world.clock)
    assert await _refused(world.verifier, token) == "issuer keys unavailable"
    assert await _refused(world.verifier, token) == "issuer keys unavailable"
    assert world.jwks.requests == 1  # a failing provider is not asked again at once
    world.jwks.status = 200
    world.clock.advance(UNKNOWN_KID_REFETCH_INTERVAL)
    assert (await world.verifier.verify(token)).subject == "alice@example.com"
    assert world.jwks.requests == 2


async def test_the_stale_keys_serve_while_the_provider_is_down(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.verifier.verify(_sso_token(sso_keys["ed-1"], world.clock, email="a@x"))
    world.jwks.status = 500
    world.clock.advance(TTL + 1)
    for user in ("b@x", "c@x"):
        token = _sso_token(sso_keys["ed-1"], world.clock, email=user)
        assert (await world.verifier.verify(token)).subject == user
        await world.external.wait_idle()
    assert world.jwks.requests == 2


async def test_keys_with_a_disallowed_algorithm_are_ignored(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world(keys=["rsa-1", "ec-1"], algorithms=("ES256",))
    ec_token = _sso_token(sso_keys["ec-1"], world.clock)
    assert (await world.verifier.verify(ec_token)).subject == "alice@example.com"
    rsa_token = _sso_token(sso_keys["rsa-1"], world.clock)
    assert await _refused(world.verifier, rsa_token) == "unknown key id"


async def test_a_token_whose_alg_is_not_its_keys_is_refused(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world(keys=["ed-1", "ec-1"])
    # Signed by the ES256 key, under the kid of the EdDSA key.
    token = jwt.encode({"iss": SSO, "aud": SSO_AUDIENCE, "email": "a@x", "iat": int(START),
                        "exp": int(START) + 60}, sso_keys["ec-1"].private_key, algorithm="ES256",
                       headers={"kid": "ed-1"})
    assert await _refused(world.verifier, token) == "algorithm not allowed"


async def test_an_sso_token_for_another_audience_is_refused(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock, aud="some-other-app")
    assert await _refused(world.verifier, token) == "wrong audience"


async def test_an_sso_token_without_the_user_claim_is_refused(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock, email=None)
    assert await _refused(world.verifier, token) == "missing claim email"


async def test_an_expired_sso_token_is_refused(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock)
    await world.verifier.verify(token)
    world.clock.advance(600 + 5)
    assert await _refused(world.verifier, token) == "token expired"


async def test_scp_lists_become_scopes_and_a_missing_jti_gets_a_stable_id(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock, scope=None, scp=["orders:write", "admin"])
    claims = await world.verifier.verify(token)
    assert claims.scopes == frozenset({"orders:write", "admin"})
    assert claims.token_id.startswith("sha256:")
    other = TokenVerifier(KeyRing(generate_signing_key("gw-2")), ISSUER, AUDIENCE, 5.0,
                          world.clock, external=world.external)
    assert (await other.verify(token)).token_id == claims.token_id


async def test_a_token_claiming_an_unconfigured_issuer_uses_our_keys(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    token = _sso_token(sso_keys["ed-1"], world.clock, iss="https://unknown-sso.test")
    assert await _refused(world.verifier, token) == "unknown key id"
    assert world.jwks.requests == 0


async def test_after_close_nothing_is_fetched(
    make_world: MakeWorld, sso_keys: dict[str, SigningKey]
) -> None:
    world = await make_world()
    await world.external.close()
    token = _sso_token(sso_keys["ed-1"], world.clock)
    assert await _refused(world.verifier, token) == "issuer keys unavailable"
    assert world.jwks.requests == 0


def test_the_jwks_parser_keeps_only_usable_public_signing_keys(
    sso_keys: dict[str, SigningKey],
) -> None:
    ed = _jwk(sso_keys["ed-1"])
    document = {"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**_jwk(sso_keys["ec-1"]), "use": "enc"},
        {**_jwk(sso_keys["rsa-1"]), "kid": ""},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
        {**ed, "d": "private-member-sent-by-mistake"},
    ]}
    keys = parse_jwks(json.dumps(document).encode(), ("RS256", "ES256", "EdDSA"))
    assert list(keys) == ["ed-1"]
    assert keys["ed-1"].algorithm_name == "EdDSA"
    with pytest.raises(JwksUnavailable, match="no usable signing key"):
        parse_jwks(json.dumps({"keys": [document["keys"][0]]}).encode(), ("RS256",))
    for body in (b"not json", b"[]", b'{"keys": {}}'):
        with pytest.raises(JwksUnavailable):
            parse_jwks(body, ("EdDSA",))


@pytest.mark.parametrize(
    "changes",
    [
        {"algorithms": ("HS256",)},
        {"algorithms": ()},
        {"jwks_url": "file:///etc/passwd"},
        {"user_claim": ""},
        {"jwks_ttl": 0},
    ],
)
def test_external_issuer_settings_are_validated(changes: dict[str, object]) -> None:
    base: dict[str, object] = {"issuer": SSO, "jwks_url": "https://sso.test/jwks",
                               "user_claim": "email", "audience": SSO_AUDIENCE}
    with pytest.raises(ValueError, match="external issuer"):
        ExternalIssuer(**{**base, **changes})  # type: ignore[arg-type]


async def test_our_issuer_cannot_also_be_external(make_world: MakeWorld) -> None:
    world = await make_world()
    with pytest.raises(ValueError, match="both ours and an external issuer"):
        TokenVerifier(KeyRing(generate_signing_key("k")), SSO, AUDIENCE, 5.0, world.clock,
                      external=world.external)
