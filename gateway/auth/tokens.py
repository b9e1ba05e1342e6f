"""Gateway tokens (JWT, RFC 7519): issue them, verify them on every request.

Owns: the claim set (``iss``, ``aud``, ``sub``, ``iat``, ``nbf``, ``exp``, ``jti``, ``scope``),
``TokenIssuer`` (signs with the key ring's active key, ``kid`` in the header), ``TokenVerifier``
(our tokens by ``kid``; tokens whose ``iss`` is a trusted external issuer by that issuer's JWKS,
see ``gateway.auth.external``) and ``InvalidToken``, whose ``reason`` is a short description fit
for an RFC 6750 ``error_description``.

Must not: put a token or key material in a reason, a repr or a log line; let a PyJWT exception
escape (each is translated here); read the time from anywhere but the injected clock (PyJWT's
own time checks are turned off, ours use the clock, so one clock rules and tests can fake it);
accept an algorithm other than the one pinned to the key the ``kid`` names (this is what refuses
``alg: none`` and HS256 signed with a public key used as an HMAC secret).

Verification results are cached, see ``TokenVerifier``. Revocation is not checked here: the
caller checks it after ``verify`` on every request, cached or not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt
from jwt import PyJWK
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from gateway.auth.signing import KeyRing, PublicKey

if TYPE_CHECKING:
    from gateway.auth.external import ExternalIssuer, ExternalIssuers

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch (``time.time`` in production, a fake in tests)."""

# Longer than any token we or an SSO provider issue; refused before any parsing.
MAX_TOKEN_LENGTH = 8192
# JWS compact serialization (RFC 7515 §7.1): three base64url segments, ASCII only. Anything else
# is refused before a parser sees it (PyJWT raises foreign errors on non-ASCII input).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_REQUIRED = ["exp", "iat", "sub", "jti"]
_EXTERNAL_REQUIRED = ["exp", "iat"]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    issuer: str
    audience: str
    subject: str
    issued_at: float
    not_before: float
    expires_at: float
    token_id: str
    scopes: frozenset[str]


class InvalidToken(Exception):
    """A token was refused; ``reason`` says why, without the token or any key material."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenIssuer:
    """Signs gateway tokens with the key ring's signing key."""

    def __init__(self, keyring: KeyRing, issuer: str, audience: str, clock: Clock) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._clock = clock

    def issue(self, subject: str, scopes: Iterable[str], ttl: float) -> tuple[str, TokenClaims]:
        """A signed token for ``subject`` living ``ttl`` seconds (whole seconds), and its claims."""
        if not subject:
            raise ValueError("a token needs a subject")
        if ttl < 1:
            raise ValueError("a token lives at least one second")
        scope_set = _checked_scopes(scopes)
        now = int(self._clock())
        claims = TokenClaims(
            issuer=self._issuer, audience=self._audience, subject=subject, issued_at=now,
            not_before=now, expires_at=now + int(ttl), token_id=secrets.token_urlsafe(16),
            scopes=scope_set)
        return self._sign(claims), claims

    def _sign(self, claims: TokenClaims) -> str:
        key = self._keyring.signing
        payload = {
            "iss": claims.issuer, "aud": claims.audience, "sub": claims.subject,
            "iat": claims.issued_at, "nbf": claims.not_before, "exp": claims.expires_at,
            "jti": claims.token_id, "scope": " ".join(sorted(claims.scopes)),
        }
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(payload, key.private_key, algorithm=key.algorithm.value, headers=headers)


def _checked_scopes(scopes: Iterable[str]) -> frozenset[str]:
    scope_set = frozenset(scopes)
    for scope in scope_set:
        if not scope or not all(char in _SCOPE_CHARS for char in scope):
            raise ValueError(f"scope {scope!r} is not a valid scope token (RFC 6749 §3.3)")
    return scope_set


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F)) - {'"', "\\"}


# A cache entry: the claims, the time window in which they are valid (leeway included), and
# the time after which the signature must be checked again (infinite for our own keys).
_Cached = tuple[TokenClaims, float, float, float]


class TokenVerifier:
    """Verifies bearer tokens; ``verify`` raises ``InvalidToken`` or returns the claims.

    Every request pays for this, so successful verifications are cached by the exact token
    string in a bounded LRU. A hit skips the signature, the base64 and the JSON and re-checks
    only the time window against the clock. This is safe because verification is a pure
    function of the token's bytes and the keys, and the key ring is fixed for the verifier's
    lifetime (a rotation builds a new verifier, with an empty cache): the same bytes would verify
    the same way again. Only successes are cached, so garbage cannot fill the cache. External
    issuers' keys can change under us, so their entries are re-verified once the key set they
    were checked with is no longer fresh (and not cached at all if it was already stale).
    """

    def __init__(
        self,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        leeway: float,
        clock: Clock,
        external: ExternalIssuers | None = None,
        cache_size: int = 10_000,
        max_ttl: float = math.inf,
    ) -> None:
        if leeway < 0 or cache_size < 0:
            raise ValueError("leeway and cache_size cannot be negative")
        if external is not None and external.issuer(issuer) is not None:
            raise ValueError(f"issuer {issuer!r} is both ours and an external issuer")
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock
        self._external = external
        self._cache_size = cache_size
        self._max_lifetime = max_ttl + leeway
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> TokenClaims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached[3]:
                self._cache.move_to_end(token)
                claims, valid_from, valid_until, _ = cached
                _check_window(valid_from, valid_until, now)
                return claims
            del self._cache[token]  # its issuer's keys must be consulted again
        if _COMPACT_JWS.fullmatch(token) is None:  # only verified tokens are ever cached
            raise InvalidToken("malformed token")
        claims, recheck_at = await self._verify_signed(token)
        # A leaked token must not be good for decades because its signer said so: ours and
        # trusted issuers' alike live at most auth.max_token_ttl. (An iat in the future is
        # refused by the window: a token is valid from max(nbf, iat) - leeway.)
        if claims.expires_at - claims.issued_at > self._max_lifetime:
            raise InvalidToken("token lifetime exceeds the maximum")
        valid_from, valid_until = self._window(claims)
        now = self._clock()
        _check_window(valid_from, valid_until, now)
        if now < recheck_at:
            self._remember(token, (claims, valid_from, valid_until, recheck_at))
        return claims

    async def _verify_signed(self, token: str) -> tuple[TokenClaims, float]:
        """The claims of a token whose signature, issuer and audience check out."""
        kid = _unverified_kid(token)
        if self._external is not None:
            issuer = _unverified_issuer(token)
            settings = None if issuer is None else self._external.issuer(issuer)
            if settings is not None:
                return await self._verify_external(self._external, settings, token, kid)
        return self._verify_local(token, kid), math.inf

    def _verify_local(self, token: str, kid: str) -> TokenClaims:
        key = self._keyring.verification_key(kid)
        if key is None:
            raise InvalidToken("unknown key id")
        payload = _decode(token, key.public_key, key.algorithm.value, self._issuer,
                          self._audience, _REQUIRED, strict_aud=True)
        return _local_claims(payload, self._audience)

    async def _verify_external(
        self, external: ExternalIssuers, settings: ExternalIssuer, token: str, kid: str
    ) -> tuple[TokenClaims, float]:
        jwk, trusted_until = await external.key(settings, kid)
        payload = _decode(token, jwk, jwk.algorithm_name, settings.issuer, settings.audience,
                          _EXTERNAL_REQUIRED, strict_aud=False)
        return _external_claims(payload, settings, token), trusted_until

    def _window(self, claims: TokenClaims) -> tuple[float, float]:
        starts = max(claims.not_before, claims.issued_at)
        return starts - self._leeway, claims.expires_at + self._leeway

    def _remember(self, token: str, entry: _Cached) -> None:
        if self._cache_size == 0:
            return
        self._cache[token] = entry
        self._cache.move_to_end(token)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _check_window(valid_from: float, valid_until: float, now: float) -> None:
    # RFC 7519: expired once now >= exp (+ leeway); not yet valid while now < nbf (- leeway).
    if now >= valid_until:
        raise InvalidToken("token expired")
    if now < valid_from:
        raise InvalidToken("token not yet valid")


def _unverified_kid(token: str) -> str:
    kid = _unverified_segment(token, 0).get("kid")
    if kid is None:
        raise InvalidToken("missing key id")
    if not isinstance(kid, str):
        raise InvalidToken("malformed token")
    return kid


def _unverified_issuer(token: str) -> str | None:
    """The ``iss`` claim before the signature is checked: only to choose whose keys to use."""
    issuer = _unverified_segment(token, 1).get("iss")
    return issuer if isinstance(issuer, str) else None


def _unverified_segment(token: str, index: int) -> Mapping[str, object]:
    """The JSON object in the header (0) or payload (1), to pick a key; nothing is trusted yet.

    Our own lean parse: PyJWT's parse validates every character in Python, which would double
    the cost of a cold verification. ``jwt.decode`` later parses the token again, strictly.
    """
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("malformed token")
    segment = segments[index]
    try:
        data = segment.encode("ascii").translate(_URLSAFE_TO_STANDARD)
        value = json.loads(base64.b64decode(data + b"=" * (-len(data) % 4), validate=True))
    except (UnicodeEncodeError, binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidToken("malformed token") from exc
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _decode(
    token: str,
    key: PublicKey | PyJWK,
    algorithm: str,
    issuer: str,
    audience: str,
    required: list[str],
    *,
    strict_aud: bool,
) -> Mapping[str, object]:
    # PyJWT checks the signature with exactly one algorithm, the key's, then iss, aud and the
    # presence and types of the required claims. Times are checked by the caller, on our clock.
    options: Options = {
        "require": required, "strict_aud": strict_aud,
        "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    }
    try:
        payload = jwt.decode(token, key, algorithms=[algorithm], audience=audience,
                             issuer=issuer, options=options)
    except (jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
        raise InvalidToken(_reason(exc)) from exc
    if not isinstance(payload, dict):
        raise InvalidToken("malformed token")
    return payload


def _reason(exc: jwt.InvalidTokenError | jwt.InvalidKeyError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"


# Most specific first: InvalidSignatureError is a DecodeError.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (InvalidSubjectError, "invalid claim sub"),
    (InvalidJTIError, "invalid claim jti"),
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidKeyError, "unusable key"),
    (jwt.DecodeError, "malformed token"),
)


def _local_claims(payload: Mapping[str, object], audience: str) -> TokenClaims:
    issued_at = _time(payload, "iat")
    return TokenClaims(
        issuer=_text(payload, "iss"),
        audience=audience,
        subject=_text(payload, "sub"),
        issued_at=issued_at,
        not_before=_time(payload, "nbf") if "nbf" in payload else issued_at,
        expires_at=_time(payload, "exp"),
        token_id=_text(payload, "jti"),
        scopes=_scope_string(payload.get("scope"), "scope"),
    )


def _external_claims(
    payload: Mapping[str, object], issuer: ExternalIssuer, token: str
) -> TokenClaims:
    issued_at = _time(payload, "iat")
    if issuer.user_claim not in payload:
        raise InvalidToken(f"missing claim {issuer.user_claim}")
    jti = payload.get("jti")
    return TokenClaims(
        issuer=issuer.issuer,
        audience=issuer.audience,
        subject=_text(payload, issuer.user_claim),
        issued_at=issued_at,
        not_before=_time(payload, "nbf") if "nbf" in payload else issued_at,
        expires_at=_time(payload, "exp"),
        token_id=jti if isinstance(jti, str) and jti else _token_digest(token),
        scopes=_external_scopes(payload),
    )


def _external_scopes(payload: Mapping[str, object]) -> frozenset[str]:
    # OAuth servers say "scope" (a string, RFC 8693); Azure AD and Okta say "scp" (often a list).
    if "scope" in payload:
        return _scope_string(payload["scope"], "scope")
    value = payload.get("scp")
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(item for item in value if item)
    return _scope_string(value, "scp")


def _scope_string(value: object, name: str) -> frozenset[str]:
    """A space-separated scope string (RFC 6749 §3.3); a missing claim is no scope."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    raise InvalidToken(f"invalid claim {name}")


def _text(payload: Mapping[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"invalid claim {name}")
    return value


def _time(payload: Mapping[str, object], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"invalid claim {name}")
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidToken(f"invalid claim {name}")
    return seconds


def _token_digest(token: str) -> str:
    """A stable id for an external token without ``jti`` (for revocation and audit)."""
    digest = hashlib.sha256(token.encode("utf-8")).digest()[:16]
    return "sha256:" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
