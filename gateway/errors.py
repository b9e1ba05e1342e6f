"""The gateway's own errors: each has a machine code, an HTTP status and a message.

Exception tree (rendered in one place, ``gateway.web.errors``):

- ``GatewayError``: base; ``code`` (snake_case), ``status``, ``message``, ``temporary``.
  - ``BadRequest`` (400): the request is malformed; the message names the field.
  - ``Unauthenticated`` (401): no valid credentials; carries the RFC 6750 error and description.
  - ``Forbidden`` (403): authenticated, but not allowed (a missing scope, a market not allowed).
  - ``NotFound`` (404), ``MethodNotAllowed`` (405).
  - ``UpstreamUnavailable`` (502) / ``UpstreamTimeout`` (504): the exchange could not be reached.
  - ``StoreUnavailable`` (503): a backing store (Redis) failed.

Errors from the upstream are not ``GatewayError``s: they pass through unchanged. Foreign
exceptions are translated where they are caught (``raise … from exc``) and never leak further.
"""

from __future__ import annotations


class GatewayError(Exception):
    code = "internal_error"
    status = 500
    temporary = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(GatewayError):
    code = "bad_request"
    status = 400


class Unauthenticated(GatewayError):
    """RFC 6750: ``error`` is ``invalid_request`` (no usable credentials) or ``invalid_token``."""

    code = "invalid_token"
    status = 401

    def __init__(self, description: str, *, error: str = "invalid_token") -> None:
        super().__init__(description, code=error)
        self.error = error

    def headers(self) -> dict[str, str]:
        if self.error == "invalid_request" and self.message == "missing bearer token":
            return {"WWW-Authenticate": 'Bearer realm="expie-gateway"'}
        description = self.message.replace('"', "'")
        return {"WWW-Authenticate": (
            f'Bearer realm="expie-gateway", error="{self.error}", '
            f'error_description="{description}"')}


class Forbidden(GatewayError):
    code = "forbidden"
    status = 403


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this call needs the scope {scope}")
        self.scope = scope

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": (
            f'Bearer realm="expie-gateway", error="insufficient_scope", scope="{self.scope}"')}


class NotFound(GatewayError):
    code = "not_found"
    status = 404


class MethodNotAllowed(GatewayError):
    code = "method_not_allowed"
    status = 405


class UpstreamUnavailable(GatewayError):
    code = "upstream_unavailable"
    status = 502
    temporary = True


class UpstreamTimeout(GatewayError):
    code = "upstream_timeout"
    status = 504
    temporary = True


class StoreUnavailable(GatewayError):
    code = "store_unavailable"
    status = 503
    temporary = True
