"""Trusted external issuers (an SSO provider): their settings and their public keys (JWKS).

Owns: ``ExternalIssuer`` (issuer URL, JWKS URL, the claim that names the user, our audience at
that issuer, the algorithms we accept from it) and ``ExternalIssuers``, one ``JwksCache`` per
issuer. A JWK Set is fetched lazily on first use, kept for ``jwks_ttl``, and refreshed in the
background once stale while the stale keys keep serving (a token whose kid is known never waits
for the network). A kid we do not know makes one refetch, single-flight (every verification
that needs keys shares the fetch in flight), and at most once per ``UNKNOWN_KID_REFETCH_INTERVAL``
so a stream of made-up kids cannot hammer the provider. After a failed fetch the stale keys keep
serving and no new fetch is tried for the same interval.

Must not: verify tokens (``gateway.auth.tokens`` does, with the key this module hands out);
accept a key whose algorithm the issuer's settings do not allow, a symmetric key or a key not
meant for signatures; keep a private JWK member it was (wrongly) sent; let an aiohttp or PyJWT
exception escape (a fetch failure becomes ``JwksUnavailable`` here and ``InvalidToken`` for the
caller).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import jwt
from jwt import PyJWK

from gateway.auth.tokens import Clock, InvalidToken

logger = logging.getLogger(__name__)

# Asymmetric algorithms only: an HMAC key in a public JWK Set would be a published secret.
SUPPORTED_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
FETCH_TIMEOUT = 5.0
UNKNOWN_KID_REFETCH_INTERVAL = 10.0
MAX_JWKS_BYTES = 256 * 1024
_ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_PUBLIC_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"})

Fetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    issuer: str
    jwks_url: str
    user_claim: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    jwks_ttl: float = 300.0

    def __post_init__(self) -> None:
        if not self.issuer or not self.user_claim or not self.audience:
            raise ValueError("an external issuer needs an issuer, a user claim and an audience")
        if not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"external issuer {self.issuer}: jwks_url must be an http(s) URL")
        unsupported = set(self.algorithms) - SUPPORTED_ALGORITHMS
        if not self.algorithms or unsupported:
            raise ValueError(f"external issuer {self.issuer}: algorithms must be some of "
                             f"{', '.join(sorted(SUPPORTED_ALGORITHMS))}")
        if not self.jwks_ttl > 0:
            raise ValueError(f"external issuer {self.issuer}: jwks_ttl must be positive")


class JwksUnavailable(Exception):
    """The issuer's JWK Set could not be fetched or held no usable key."""


class JwksCache:
    """The signing keys of one external issuer, by kid."""

    def __init__(
        self,
        settings: ExternalIssuer,
        fetch: Fetch,
        clock: Clock,
        refetch_interval: float = UNKNOWN_KID_REFETCH_INTERVAL,
    ) -> None:
        self.settings = settings
        self._fetch = fetch
        self._clock = clock
        self._refetch_interval = refetch_interval
        self._keys: dict[str, PyJWK] = {}
        self._fresh_until = -math.inf
        self._retry_at = -math.inf
        self._unknown_kid_fetch_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> tuple[PyJWK, float]:
        """The key named ``kid`` and the time until which it needs no re-check (its key set is
        fresh, or a failing provider is not asked again), or ``InvalidToken``."""
        if self._should_fetch(kid, self._clock()):
            self._inflight = asyncio.get_running_loop().create_task(
                self._refresh(), name=f"jwks {self.settings.issuer}")
        if kid not in self._keys and self._inflight is not None:
            await asyncio.shield(self._inflight)
        key = self._keys.get(kid)
        if key is not None:
            return key, max(self._fresh_until, self._retry_at)
        raise InvalidToken("unknown key id" if self._keys else "issuer keys unavailable")

    async def wait_idle(self) -> None:
        """Return once no fetch is in flight (tests; an orderly shutdown)."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)

    def cancel(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None

    def _should_fetch(self, kid: str, now: float) -> bool:
        if self._inflight is not None or now < self._retry_at:
            return False
        if now >= self._fresh_until:
            return True
        if kid in self._keys or now < self._unknown_kid_fetch_at + self._refetch_interval:
            return False
        self._unknown_kid_fetch_at = now
        return True

    async def _refresh(self) -> None:
        try:
            keys = parse_jwks(await self._fetch(self.settings.jwks_url), self.settings.algorithms)
        except JwksUnavailable as exc:
            self._retry_at = self._clock() + self._refetch_interval
            logger.warning("keys of external issuer %s unavailable: %s", self.settings.issuer, exc)
        else:
            self._keys = keys
            self._fresh_until = self._clock() + self.settings.jwks_ttl
            self._retry_at = -math.inf
        finally:
            self._inflight = None


def parse_jwks(body: bytes, algorithms: Sequence[str]) -> dict[str, PyJWK]:
    """The usable signing keys of a JWK Set document, by kid; ``JwksUnavailable`` if none."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JwksUnavailable("the JWK Set is not JSON") from exc
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise JwksUnavailable("the JWK Set has no keys array")
    keys: dict[str, PyJWK] = {}
    for member in members:
        key = _usable_key(member, algorithms)
        if key is not None and key.key_id is not None:
            keys.setdefault(key.key_id, key)
    if not keys:
        raise JwksUnavailable("the JWK Set has no usable signing key")
    return keys


def _usable_key(member: object, algorithms: Sequence[str]) -> PyJWK | None:
    if not isinstance(member, dict) or member.get("use", "sig") != "sig":
        return None
    kid, kty, alg = member.get("kid"), member.get("kty"), member.get("alg")
    if not isinstance(kid, str) or not kid or kty not in _ASYMMETRIC_KEY_TYPES:
        return None
    if alg is not None and alg not in algorithms:
        return None
    public = {name: value for name, value in member.items() if name in _PUBLIC_JWK_MEMBERS}
    try:
        key = PyJWK(public)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):  # broken or unsupported: skipped
        return None
    return key if key.algorithm_name in algorithms else None


class ExternalIssuers:
    """The trusted external issuers, by issuer URL; owns the HTTP session it fetches JWKS with.

    ``session_factory`` is called once, on the first fetch; ``close`` closes that session.
    """

    def __init__(
        self,
        issuers: Sequence[ExternalIssuer],
        session_factory: Callable[[], aiohttp.ClientSession],
        clock: Clock,
    ) -> None:
        self._settings = {issuer.issuer: issuer for issuer in issuers}
        if len(self._settings) != len(issuers):
            raise ValueError("an external issuer is configured twice")
        self._caches = {
            issuer.issuer: JwksCache(issuer, self._fetch, clock) for issuer in issuers}
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ExternalIssuers({list(self._settings)!r})"

    def issuer(self, issuer: str) -> ExternalIssuer | None:
        return self._settings.get(issuer)

    async def key(self, issuer: ExternalIssuer, kid: str) -> tuple[PyJWK, float]:
        """See ``JwksCache.key``."""
        cache = self._caches.get(issuer.issuer)
        if cache is None:
            raise InvalidToken("wrong issuer")
        return await cache.key(kid)

    async def wait_idle(self) -> None:
        for cache in self._caches.values():
            await cache.wait_idle()

    async def close(self) -> None:
        self._closed = True
        for cache in self._caches.values():
            cache.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, url: str) -> bytes:
        if self._closed:
            raise JwksUnavailable("the gateway is shutting down")
        if self._session is None:
            self._session = self._session_factory()
        if self._session.closed:
            raise JwksUnavailable("the HTTP session is closed")
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        try:
            async with self._session.get(url, timeout=timeout) as response:
                response.raise_for_status()
                return await _read_bounded(response)
        except aiohttp.ClientResponseError as exc:
            raise JwksUnavailable(f"the JWKS URL answered HTTP {exc.status}") from exc
        except aiohttp.ClientError as exc:
            raise JwksUnavailable(f"cannot reach the JWKS URL ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise JwksUnavailable(f"no answer from the JWKS URL in {FETCH_TIMEOUT:g} s") from exc


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"the JWK Set is larger than {MAX_JWKS_BYTES} bytes")
    return bytes(body)
