"""``POST /auth/token``, ``GET /.well-known/jwks.json`` and ``POST /admin/tokens/revoke``."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.auth.authenticator import user_cutoff
from gateway.auth.grants import GRANT_TYPE, ClientCredentials, OAuthError, client_credentials
from gateway.errors import BadRequest, Unauthenticated
from gateway.keys import AUTHENTICATOR, CLOCK, GRANT, JWKS_BODY, REVOCATIONS, SETTINGS
from gateway.web.bodies import TOKEN_BODY_LIMIT, json_object, read_body
from gateway.web.guard import caller_address

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def issue_token(request: web.Request) -> web.Response:
    """RFC 6749 §4.4; errors in the §5.2 shape rather than the gateway's own."""
    try:
        credentials, scope = await _token_request(request)
        body = await request.app[GRANT].grant(credentials, scope, caller_address(request))
    except OAuthError as exc:
        response = web.json_response(exc.body(), status=exc.status, headers=NO_STORE)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="expie-gateway"'
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    return web.json_response(body, headers=NO_STORE)


async def _token_request(request: web.Request) -> tuple[ClientCredentials, str | None]:
    if request.content_type != FORM:
        raise OAuthError("invalid_request", f"the body must be {FORM}")
    raw = await read_body(request, TOKEN_BODY_LIMIT)
    try:
        form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    if form.get("grant_type") != GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
    return client_credentials(request.headers.get("Authorization"), form), form.get("scope")


async def jwks(request: web.Request) -> web.Response:
    return web.Response(body=request.app[JWKS_BODY], content_type="application/jwk-set+json",
                        headers={"Cache-Control": "public, max-age=300"})


async def revoke(request: web.Request) -> web.Response:
    """``{"jti": id}``, ``{"token": jwt}`` or ``{"user": id}`` (every token issued up to now)."""
    body = await json_object(request)
    settings, now = request.app[SETTINGS], request.app[CLOCK]()
    store = request.app[REVOCATIONS]
    keep_until = now + settings.auth.max_token_ttl + settings.auth.leeway
    if set(body) == {"user"} and isinstance(body["user"], str) and body["user"]:
        before = user_cutoff(now)
        await store.revoke_user(body["user"], before=before, keep_until=keep_until)
        return web.json_response({"revoked": {"user": body["user"], "before": int(before)}})
    if set(body) == {"jti"} and isinstance(body["jti"], str) and body["jti"]:
        await store.revoke_token(body["jti"], expires_at=keep_until)
        return web.json_response({"revoked": {"jti": body["jti"]}})
    if set(body) == {"token"} and isinstance(body["token"], str):
        try:
            claims = await request.app[AUTHENTICATOR].verify(body["token"])
        except Unauthenticated as exc:
            raise BadRequest(f"token: {exc.message}") from exc
        expires_at = claims.expires_at + settings.auth.leeway
        await store.revoke_token(claims.token_id, expires_at=expires_at)
        return web.json_response({"revoked": {"jti": claims.token_id}})
    raise BadRequest('body: expected exactly one of "jti", "token" or "user" (a non-empty string)')
