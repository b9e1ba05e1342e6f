"""From an ``Authorization`` header to a ``Principal``, or ``Unauthenticated`` saying why.

Order of checks: a bearer token is present and well-formed; its signature, issuer, audience and
times verify; it is not revoked (by id or by user); its subject is still a user. The principal's
scopes are the token's scopes that the user still holds, so narrowing a user's scopes in the
directory takes effect on tokens already issued.
"""

from __future__ import annotations

import math

from gateway.auth.tokens import InvalidToken, TokenClaims, TokenVerifier
from gateway.auth.users import User, UserDirectory
from gateway.core.principal import Principal, Scope
from gateway.errors import MalformedCredentials, Unauthenticated
from gateway.stores.revocation import RevocationStore

SCOPE_NAMES = frozenset(scope.value for scope in Scope)
PRINCIPALS_KEPT = 10_000


class Authenticator:
    def __init__(
        self, verifier: TokenVerifier, revocations: RevocationStore, directory: UserDirectory
    ) -> None:
        self._verifier = verifier
        self._revocations = revocations
        self.directory = directory
        # Principals already built, by token id; reused only for the very same verified claims
        # and the very same user record, so a changed or removed user is never served stale.
        self._principals: dict[str, tuple[TokenClaims, User, Principal]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        claims = await self.verify(bearer_token(authorization))
        return self.principal(claims)

    async def verify(self, token: str) -> TokenClaims:
        try:
            claims = await self._verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthenticated(exc.reason) from exc
        if self._revocations.is_revoked(claims.token_id, claims.subject, claims.issued_at):
            raise Unauthenticated("token revoked")
        return claims

    def principal(self, claims: TokenClaims) -> Principal:
        user = self.directory.get(claims.subject)
        if user is None:
            raise Unauthenticated("unknown user")
        known = self._principals.get(claims.token_id)
        if known is not None and known[0] is claims and known[1] is user:
            return known[2]
        scopes = frozenset(Scope(name) for name in claims.scopes & SCOPE_NAMES) & user.scopes
        principal = Principal(
            user_id=user.id, account=user.account, scopes=scopes, markets=user.markets,
            token_id=claims.token_id, issued_at=claims.issued_at, expires_at=claims.expires_at)
        if len(self._principals) >= PRINCIPALS_KEPT:
            del self._principals[next(iter(self._principals))]
        self._principals[claims.token_id] = (claims, user, principal)
        return principal


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing bearer token", error=None)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("unsupported authorization scheme: use Bearer", error=None)
    token = token.strip()
    if not token or " " in token:
        raise MalformedCredentials("the Bearer authorization header must carry one token")
    return token


def user_cutoff(now: float) -> float:
    """The ``before`` that revokes every token of a user issued up to ``now``.

    ``iat`` counts whole seconds, so a token issued earlier in the current second carries
    ``iat == floor(now)``: the cutoff is the end of this second (``iat < cutoff`` is refused).
    A token issued later in the same second is refused too; the next second's tokens are not.
    """
    return float(math.floor(now) + 1)
