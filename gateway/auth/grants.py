"""The OAuth 2.0 client-credentials grant (RFC 6749 §4.4) that hands out gateway tokens.

Client authentication by HTTP Basic or by form fields (never both); the client may ask for a
subset of its scopes. Failures are ``OAuthError`` in the §5.2 vocabulary. The secret check runs
a deliberately slow KDF, so it runs in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote

from gateway.auth.passwords import generate_client_secret, hash_secret, verify_secret
from gateway.auth.sign_in_throttle import SecretChecksBusy, SignInThrottle, SignInThrottled
from gateway.auth.tokens import TokenIssuer
from gateway.auth.users import UserDirectory
from gateway.core.principal import Scope, format_scopes

GRANT_TYPE = "client_credentials"


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400, *,
                 retry_after: float | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    # Basic authentication failures are answered with a Basic challenge (RFC 6749 §5.2).
    via_basic: bool


def client_credentials(
    authorization: str | None, form: Mapping[str, str]
) -> ClientCredentials:
    """The client's id and secret, from exactly one of HTTP Basic or the form body."""
    in_form = "client_id" in form or "client_secret" in form
    if authorization and authorization.lower().startswith("basic "):
        if in_form:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        return _from_basic(authorization[6:].strip())
    if not in_form:
        raise OAuthError("invalid_client", "client authentication is missing", 401)
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        raise OAuthError("invalid_request", "client_id and client_secret are both required")
    return ClientCredentials(client_id, secret, via_basic=False)


def _from_basic(encoded: str) -> ClientCredentials:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except ValueError as exc:  # not ASCII, not base64 (binascii.Error), not UTF-8
        raise OAuthError("invalid_request", "malformed Basic credentials") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise OAuthError("invalid_request", "malformed Basic credentials")
    return ClientCredentials(unquote(client_id), unquote(secret), via_basic=True)


class ClientCredentialsGrant:
    def __init__(self, directory: UserDirectory, issuer: TokenIssuer, token_ttl: float,
                 throttle: SignInThrottle) -> None:
        self._directory = directory
        self._issuer = issuer
        self._ttl = token_ttl
        self._throttle = throttle

    async def grant(self, credentials: ClientCredentials, scope: str | None,
                    address: str | None) -> dict[str, object]:
        """A token for the client whose secret checks out; throttled per client id and address."""
        client_id = credentials.client_id
        try:
            await self._throttle.check(client_id, address)
            user = self._directory.get(client_id)
            stored = user.secret_hash if user and user.secret_hash else _decoy_hash()
            async with self._throttle.secret_check():
                valid = await asyncio.to_thread(verify_secret, credentials.client_secret, stored)
        except SignInThrottled as exc:
            raise OAuthError("slow_down", str(exc), 429, retry_after=exc.retry_after) from None
        except SecretChecksBusy:
            raise OAuthError("temporarily_unavailable", "too many sign-ins at once; retry",
                             503, retry_after=1) from None
        if user is None or user.secret_hash is None or not valid:
            await self._throttle.failed(client_id, address)
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        await self._throttle.succeeded(client_id)
        scopes = _granted_scopes(user.scopes, scope)
        token, claims = self._issuer.issue(user.id, [s.value for s in scopes], self._ttl)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(claims.expires_at - claims.issued_at),
            "scope": format_scopes(scopes),
        }


def _granted_scopes(held: frozenset[Scope], requested: str | None) -> frozenset[Scope]:
    if requested is None or not requested.strip():
        return held
    names = set(requested.split())
    known = {scope.value for scope in Scope}
    if not names <= known:
        raise OAuthError("invalid_scope", f"unknown scope {sorted(names - known)[0]}")
    wanted = frozenset(Scope(name) for name in names)
    if not wanted <= held:
        raise OAuthError("invalid_scope", f"scope {sorted(wanted - held)[0]} is not granted "
                         "to this client")
    return wanted


@cache
def _decoy_hash() -> str:
    """Checked when the client id is unknown, so the answer's timing does not reveal which exist."""
    return hash_secret(generate_client_secret())
