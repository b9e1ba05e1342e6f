"""Gateway tokens: issue and verify, every attack refused with its reason, rotation, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Coroutine

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.signing import Algorithm, KeyRing, SigningKey, generate_signing_key
from gateway.auth.tokens import (
    MAX_TOKEN_LENGTH,
    InvalidToken,
    TokenClaims,
    TokenIssuer,
    TokenVerifier,
)
from tests.clock import FakeClock

ISSUER = "https://gateway.test"
AUDIENCE = "expie-gateway"
START = 1_700_000_000.0
LEEWAY = 30.0
TTL = 900




@pytest.fixture(scope="module")
def keys() -> dict[Algorithm, SigningKey]:
    return {alg: generate_signing_key(f"k-{alg.value.lower()}", alg) for alg in Algorithm}


@pytest.fixture
def key(keys: dict[Algorithm, SigningKey]) -> SigningKey:
    return keys[Algorithm.EDDSA]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring(key: SigningKey) -> KeyRing:
    return KeyRing(key)


@pytest.fixture
def issuer(ring: KeyRing, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(ring, ISSUER, AUDIENCE, clock)


@pytest.fixture
def verifier(ring: KeyRing, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned(header: dict[str, object], payload: dict[str, object]) -> str:
    return ".".join(_b64(json.dumps(part).encode()) for part in (header, payload))


def _payload(now: float = START, /, **overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(now), "nbf": int(now),
        "exp": int(now) + TTL, "jti": "token-1", "scope": "market:read",
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def _sign(key: SigningKey, payload: dict[str, object], **header: object) -> str:
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm.value,
                      headers={"kid": key.kid, **header})


def _public_pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


async def refused(verifier: TokenVerifier, token: str) -> str:
    """The reason the token is refused; the reason never carries the token or a part of it."""
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    reason = caught.value.reason
    assert str(caught.value) == reason
    for part in [token, *token.split(".")]:
        if len(part) > 8:
            assert part not in reason
    return reason


def run_now(coroutine: Coroutine[object, object, TokenClaims]) -> TokenClaims:
    """Drive a verification that needs no I/O (our own keys) to its end, outside an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("a local verification suspended")


# Issue and verify.


async def test_an_issued_token_verifies_to_its_claims(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, claims = issuer.issue("alice", ["orders:write", "market:read"], TTL)
    assert claims == TokenClaims(
        issuer=ISSUER, audience=AUDIENCE, subject="alice", issued_at=START, not_before=START,
        expires_at=START + TTL, token_id=claims.token_id,
        scopes=frozenset({"orders:write", "market:read"}))
    assert await verifier.verify(token) == claims


def test_the_header_names_the_algorithm_and_the_kid(issuer: TokenIssuer) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT", "kid": "k-eddsa"}


def test_the_payload_carries_exactly_the_registered_claims(
    issuer: TokenIssuer, clock: FakeClock
) -> None:
    clock.now = START + 0.75
    token, claims = issuer.issue("alice", ["orders:write", "market:read"], 60.9)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload == {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(START), "nbf": int(START),
        "exp": int(START) + 60, "jti": claims.token_id, "scope": "market:read orders:write",
    }


def test_each_token_has_its_own_random_id(issuer: TokenIssuer) -> None:
    ids = {issuer.issue("alice", [], TTL)[1].token_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(token_id) >= 20 for token_id in ids)


@pytest.mark.parametrize(
    ("subject", "scopes", "ttl", "message"),
    [
        pytest.param("", [], TTL, "subject", id="empty-subject"),
        pytest.param("alice", [], 0.5, "one second", id="short-ttl"),
        pytest.param("alice", ["two words"], TTL, "scope", id="scope-with-space"),
        pytest.param("alice", [""], TTL, "scope", id="empty-scope"),
        pytest.param("alice", ['quo"te'], TTL, "scope", id="scope-with-quote"),
        pytest.param("alice", ["caf\u00e9"], TTL, "scope", id="non-ascii-scope"),
    ],
)
def test_issue_refuses_bad_arguments(
    issuer: TokenIssuer, subject: str, scopes: list[str], ttl: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        issuer.issue(subject, scopes, ttl)


@pytest.mark.parametrize("alg", [Algorithm.RS256, Algorithm.ES256, Algorithm.EDDSA])
async def test_every_algorithm_signs_and_verifies(
    keys: dict[Algorithm, SigningKey], clock: FakeClock, alg: Algorithm
) -> None:
    ring = KeyRing(keys[alg])
    token, claims = TokenIssuer(ring, ISSUER, AUDIENCE, clock).issue("bob", ["admin"], TTL)
    assert jwt.get_unverified_header(token)["alg"] == alg.value
    assert await TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock).verify(token) == claims


async def test_scopes_round_trip(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    for scopes in [set(), {"admin"}, {"market:read", "orders:read", "orders:write"}]:
        token, _ = issuer.issue("alice", scopes, TTL)
        assert (await verifier.verify(token)).scopes == frozenset(scopes)


async def test_a_token_without_a_scope_claim_has_no_scope(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    token = _sign(key, _payload(scope=None))
    assert (await verifier.verify(token)).scopes == frozenset()


def test_the_published_jwks_verifies_our_tokens(
    keys: dict[Algorithm, SigningKey], clock: FakeClock
) -> None:
    for signing in keys.values():
        ring = KeyRing(signing)
        token, _ = TokenIssuer(ring, ISSUER, AUDIENCE, clock).issue("alice", [], TTL)
        (member,) = ring.jwks()["keys"]
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(member)
        public = jwt.PyJWK(member)
        payload = jwt.decode(token, public, algorithms=[member["alg"]], audience=AUDIENCE,
                             options={"verify_exp": False, "verify_iat": False,
                                      "verify_nbf": False})
        assert payload["sub"] == "alice"


# The attack list: each refused, with its reason.


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="one-segment"),
        pytest.param("abc.def", id="two-segments"),
        pytest.param("a.b.c.d", id="four-segments"),
        pytest.param("!!!.???.***", id="not-base64"),
        pytest.param(_b64(b"[1, 2]") + ".e30.", id="header-not-an-object"),
        pytest.param(_b64(b"{not json") + ".e30.", id="header-not-json"),
        pytest.param(_b64(b'{"alg": "EdDSA", "kid": 7}') + ".e30.", id="kid-not-a-string"),
        pytest.param("é.é.é", id="non-ascii"),
        pytest.param("a" * (MAX_TOKEN_LENGTH + 1), id="too-long"),
    ],
)
async def test_a_malformed_token_is_refused(verifier: TokenVerifier, token: str) -> None:
    assert await refused(verifier, token) == "malformed token"


@pytest.mark.parametrize("tail", ["\u00e9", "\udcff", "\uff10", " ", "="])
async def test_a_signed_token_with_a_foreign_character_is_malformed_not_a_crash(
    issuer: TokenIssuer, verifier: TokenVerifier, tail: str
) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    assert await refused(verifier, token + tail) == "malformed token"


async def test_our_own_signature_does_not_make_a_decades_long_token_acceptable(
    ring: KeyRing, key: SigningKey, clock: FakeClock
) -> None:
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock, max_ttl=86400)
    forever = _sign(key, _payload(exp=int(START) + 30 * 365 * 86400))
    assert await refused(verifier, forever) == "token lifetime exceeds the maximum"
    longest = _sign(key, _payload(exp=int(START) + 86400 + int(LEEWAY)))
    assert (await verifier.verify(longest)).subject == "alice"


async def test_a_payload_that_is_not_an_object_is_refused(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    token = jwt.PyJWS().encode(b"[1]", key.private_key, algorithm="EdDSA",
                               headers={"kid": key.kid})
    assert await refused(verifier, token) == "malformed token"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_refused(key: SigningKey, verifier: TokenVerifier, alg: str) -> None:
    token = _unsigned({"alg": alg, "typ": "JWT", "kid": key.kid}, _payload()) + "."
    assert await refused(verifier, token) == "algorithm not allowed"


async def test_a_header_without_alg_is_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    token = _unsigned({"typ": "JWT", "kid": key.kid}, _payload()) + "." + _b64(b"x" * 64)
    assert await refused(verifier, token) == "algorithm not allowed"


@pytest.mark.parametrize("alg", list(Algorithm))
async def test_hs256_signed_with_the_public_key_is_refused(
    keys: dict[Algorithm, SigningKey], clock: FakeClock, alg: Algorithm
) -> None:
    # Algorithm confusion: the attacker takes our published public key as an HMAC secret.
    key = keys[alg]
    verifier = TokenVerifier(KeyRing(key), ISSUER, AUDIENCE, LEEWAY, clock)
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": key.kid}, _payload())
    for secret in (_public_pem(key), json.dumps(KeyRing(key).jwks()["keys"][0]).encode()):
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(signature)}"
        assert await refused(verifier, token) == "algorithm not allowed"


async def test_an_algorithm_other_than_the_keys_is_refused(
    keys: dict[Algorithm, SigningKey], verifier: TokenVerifier
) -> None:
    # Signed by a real ES256 key, but under the kid of our EdDSA key.
    token = _sign(keys[Algorithm.ES256], _payload(), kid="k-eddsa")
    assert await refused(verifier, token) == "algorithm not allowed"


async def test_a_token_signed_by_another_key_with_our_kid_is_refused(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    impostor = generate_signing_key(key.kid)
    assert await refused(verifier, _sign(impostor, _payload())) == "bad signature"


async def test_a_tampered_payload_is_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    header, _, signature = _sign(key, _payload()).split(".")
    forged = _unsigned({}, _payload(sub="admin", scope="admin")).split(".")[1]
    assert await refused(verifier, f"{header}.{forged}.{signature}") == "bad signature"


@pytest.mark.parametrize("alg", list(Algorithm))
async def test_a_truncated_or_empty_signature_is_refused(
    keys: dict[Algorithm, SigningKey], clock: FakeClock, alg: Algorithm
) -> None:
    key = keys[alg]
    verifier = TokenVerifier(KeyRing(key), ISSUER, AUDIENCE, LEEWAY, clock)
    signing_input, _, signature = _sign(key, _payload()).rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    for cut in (raw[:-1], raw[:10], b""):
        assert await refused(verifier, f"{signing_input}.{_b64(cut)}") == "bad signature"


async def test_an_unknown_kid_is_refused(verifier: TokenVerifier) -> None:
    stranger = generate_signing_key("k-unknown")
    assert await refused(verifier, _sign(stranger, _payload())) == "unknown key id"


async def test_a_token_without_kid_is_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    token = jwt.encode(_payload(), key.private_key, algorithm="EdDSA")
    assert await refused(verifier, token) == "missing key id"


async def test_an_expired_token_is_refused(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    clock.advance(TTL + LEEWAY + 1)
    assert await refused(verifier, token) == "token expired"


async def test_a_token_not_yet_valid_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    future = TokenIssuer(ring, ISSUER, AUDIENCE, FakeClock(START + 3600))
    token, _ = future.issue("alice", [], TTL)
    assert await refused(verifier, token) == "token not yet valid"


async def test_a_token_with_a_future_nbf_is_refused(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    token = _sign(key, _payload(nbf=int(START) + 120))
    assert await refused(verifier, token) == "token not yet valid"


async def test_a_token_from_another_issuer_is_refused(
    ring: KeyRing, clock: FakeClock, verifier: TokenVerifier
) -> None:
    token, _ = TokenIssuer(ring, "https://evil.test", AUDIENCE, clock).issue("alice", [], TTL)
    assert await refused(verifier, token) == "wrong issuer"


async def test_a_token_for_another_audience_is_refused(
    ring: KeyRing, clock: FakeClock, verifier: TokenVerifier
) -> None:
    token, _ = TokenIssuer(ring, ISSUER, "another-service", clock).issue("alice", [], TTL)
    assert await refused(verifier, token) == "wrong audience"


async def test_an_audience_list_is_refused(key: SigningKey, verifier: TokenVerifier) -> None:
    token = _sign(key, _payload(aud=[AUDIENCE, "another-service"]))
    assert await refused(verifier, token) == "wrong audience"


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "aud"])
async def test_a_missing_claim_is_refused(
    key: SigningKey, verifier: TokenVerifier, claim: str
) -> None:
    token = _sign(key, _payload(**{claim: None}))
    assert await refused(verifier, token) == f"missing claim {claim}"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "tomorrow"), ("exp", True), ("exp", 10**400), ("iat", "now"),
        ("nbf", [1]), ("sub", 42), ("sub", ""), ("jti", 7), ("scope", ["admin"]),
    ],
)
async def test_a_claim_of_the_wrong_type_is_refused(
    key: SigningKey, verifier: TokenVerifier, claim: str, value: object
) -> None:
    token = _sign(key, _payload(**{claim: value}))
    assert await refused(verifier, token) == f"invalid claim {claim}"


def test_invalid_token_shows_only_its_reason() -> None:
    error = InvalidToken("bad signature")
    assert repr(error) == "InvalidToken('bad signature')"


# Leeway.


async def test_a_token_expired_within_the_leeway_is_accepted(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token, claims = issuer.issue("alice", [], TTL)
    clock.advance(TTL + LEEWAY - 1)
    assert await verifier.verify(token) == claims
    clock.advance(1)  # now == exp + leeway: expired (RFC 7519 §4.1.4, "on or after")
    assert await refused(verifier, token) == "token expired"


async def test_a_not_before_within_the_leeway_is_accepted(
    key: SigningKey, verifier: TokenVerifier
) -> None:
    early = _sign(key, _payload(iat=int(START + LEEWAY), nbf=int(START + LEEWAY)))
    assert (await verifier.verify(early)).not_before == START + LEEWAY
    too_early = _sign(key, _payload(iat=int(START + LEEWAY + 1), nbf=int(START + LEEWAY + 1)))
    assert await refused(verifier, too_early) == "token not yet valid"


async def test_without_leeway_expiry_is_exact(ring: KeyRing, issuer: TokenIssuer,
                                              clock: FakeClock) -> None:
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE, 0, clock)
    token, _ = issuer.issue("alice", [], TTL)
    clock.advance(TTL - 1)
    await verifier.verify(token)
    clock.advance(1)
    assert await refused(verifier, token) == "token expired"


def test_a_negative_leeway_or_cache_size_is_refused(ring: KeyRing, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="negative"):
        TokenVerifier(ring, ISSUER, AUDIENCE, -1, clock)
    with pytest.raises(ValueError, match="negative"):
        TokenVerifier(ring, ISSUER, AUDIENCE, 0, clock, cache_size=-1)


# Rotation.


async def test_a_rotated_key_verifies_while_configured_and_is_refused_once_removed(
    clock: FakeClock,
) -> None:
    old, new = generate_signing_key("2024-01"), generate_signing_key("2024-02")
    old_token, _ = TokenIssuer(KeyRing(old), ISSUER, AUDIENCE, clock).issue("alice", [], TTL)

    rotating = KeyRing(new, [old.public()])
    new_token, _ = TokenIssuer(rotating, ISSUER, AUDIENCE, clock).issue("alice", [], TTL)
    assert jwt.get_unverified_header(new_token)["kid"] == "2024-02"
    during = TokenVerifier(rotating, ISSUER, AUDIENCE, LEEWAY, clock)
    assert (await during.verify(old_token)).subject == "alice"
    assert (await during.verify(new_token)).subject == "alice"
    assert [member["kid"] for member in rotating.jwks()["keys"]] == ["2024-02", "2024-01"]

    after = TokenVerifier(KeyRing(new), ISSUER, AUDIENCE, LEEWAY, clock)
    assert await refused(after, old_token) == "unknown key id"
    assert (await after.verify(new_token)).subject == "alice"


# The cache of verified tokens.


async def test_a_second_verification_is_a_cache_hit(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first
    assert verifier.cached_tokens == 1


async def test_a_cache_hit_still_refuses_an_expired_token(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    await verifier.verify(token)
    clock.advance(TTL + LEEWAY)
    assert verifier.cached_tokens == 1
    assert await refused(verifier, token) == "token expired"
    assert await refused(verifier, token) == "token expired"


async def test_a_cache_hit_refuses_a_token_when_the_clock_steps_back(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    token, _ = issuer.issue("alice", [], TTL)
    await verifier.verify(token)
    clock.advance(-(LEEWAY + 1))
    assert await refused(verifier, token) == "token not yet valid"


async def test_refusals_are_not_cached(
    key: SigningKey, issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    await refused(verifier, _sign(generate_signing_key(key.kid), _payload()))
    await refused(verifier, "garbage")
    assert verifier.cached_tokens == 0
    token, _ = issuer.issue("alice", [], TTL)
    clock.advance(TTL + LEEWAY)
    await refused(verifier, token)
    assert verifier.cached_tokens == 0


async def test_the_cache_is_a_bounded_lru(
    ring: KeyRing, issuer: TokenIssuer, clock: FakeClock
) -> None:
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock, cache_size=2)
    first, second, third = (issuer.issue(name, [], TTL)[0] for name in ("a", "b", "c"))
    claims_first = await verifier.verify(first)
    claims_second = await verifier.verify(second)
    assert await verifier.verify(first) is claims_first  # first is now the most recent
    await verifier.verify(third)  # evicts second, the least recently used
    assert verifier.cached_tokens == 2
    assert await verifier.verify(first) is claims_first
    again = await verifier.verify(second)
    assert again == claims_second
    assert again is not claims_second


async def test_a_cache_size_of_zero_disables_the_cache(
    ring: KeyRing, issuer: TokenIssuer, clock: FakeClock
) -> None:
    verifier = TokenVerifier(ring, ISSUER, AUDIENCE, LEEWAY, clock, cache_size=0)
    token, _ = issuer.issue("alice", [], TTL)
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert first == second
    assert first is not second
    assert verifier.cached_tokens == 0


# Whatever the input, the only failure is InvalidToken.

_FUZZ_KEY = generate_signing_key("k-fuzz")
_FUZZ_RING = KeyRing(_FUZZ_KEY)
_FUZZ_TOKEN = TokenIssuer(_FUZZ_RING, ISSUER, AUDIENCE, FakeClock()).issue("a", ["admin"], TTL)[0]


_TOKEN_CHARS = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.text(_TOKEN_CHARS, max_size=200))
def test_arbitrary_text_is_refused_as_invalid_token(text: str) -> None:
    verifier = TokenVerifier(_FUZZ_RING, ISSUER, AUDIENCE, LEEWAY, FakeClock())
    with pytest.raises(InvalidToken):
        run_now(verifier.verify(text))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_FUZZ_TOKEN) - 1), _TOKEN_CHARS)
def test_any_single_character_change_is_refused(index: int, char: str) -> None:
    mutated = _FUZZ_TOKEN[:index] + char + _FUZZ_TOKEN[index + 1:]
    verifier = TokenVerifier(_FUZZ_RING, ISSUER, AUDIENCE, LEEWAY, FakeClock(), cache_size=0)
    if mutated == _FUZZ_TOKEN:
        assert run_now(verifier.verify(mutated)).subject == "a"
        return
    with pytest.raises(InvalidToken):
        run_now(verifier.verify(mutated))
