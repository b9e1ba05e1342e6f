"""The gateway's own errors: each has a machine code, an HTTP status and a message.

Exception tree (rendered in one place, ``gateway.web.errors``):

- ``GatewayError``: base; ``code`` (snake_case), ``status``, ``message``, ``temporary``.
  - ``BadRequest`` (400): the request is malformed; the message names the field.
    - ``MalformedRequest`` (400): not valid HTTP (aiohttp's parser refused it).
  - ``RequestTimeout`` (408): the head or the body took longer than its deadline.
  - ``UpgradeRequired`` (426): a plain request to ``/ws``.
  - ``PayloadTooLarge`` (413), ``UriTooLong`` (414), ``HeadersTooLarge`` (431): over a size limit.
  - ``MalformedCredentials`` (400): a Bearer header that does not carry exactly one token.
  - ``Unauthenticated`` (401): no valid credentials; carries the RFC 6750 error and description.
  - ``Forbidden`` (403): authenticated, but not allowed (a missing scope, a market not allowed).
    - ``RiskLimitExceeded`` (403): an order outside the desk's risk limits.
  - ``NotFound`` (404), ``MethodNotAllowed`` (405).
  - ``IdempotencyInProgress`` / ``IdempotencyOutcomeUnknown`` (409), ``IdempotencyKeyReused``
    (422): an ``Idempotency-Key`` that cannot be honoured as a fresh request or a replay.
  - ``TradingHalted`` (423): a kill switch covers the caller; names the reason and who set it.
  - ``RateLimited`` (429, ``Retry-After``, ``RateLimit-*``): a limit of the caller or its account.
  - ``UpstreamUnavailable`` (502) / ``UpstreamTimeout`` (504): the exchange could not be reached.
    - ``CircuitOpen`` (503, ``Retry-After``): the exchange has been failing; calls fail fast
      until the next probe (a subclass, so "serve stale when the exchange fails" covers it).
  - ``StoreUnavailable`` (503): a backing store (Redis) failed.
    - ``StateLost`` (503): Redis no longer holds the state the replicas saw (emptied, replaced,
      a stale replica); order calls stop desk-wide until an admin acknowledges the loss.
  - ``StateNotLost`` (409): an acknowledgement with no loss to acknowledge (or another came first).
  - ``RecordsNotExported`` (409): an acknowledgement that would drop records no export wrote out.
  - ``PersistenceRequired`` (500, at start only): ``redis.require_persistence`` and a Redis that
    keeps nothing on disk.
  - ``InternalError`` (500): a bug; answered in the same shape, logged with its traceback.

Errors from the upstream are not ``GatewayError``s: they pass through unchanged. Foreign
exceptions are translated where they are caught (``raise … from exc``) and never leak further.
"""

from __future__ import annotations

import math


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

    def details(self) -> dict[str, str]:
        """Members added to the error object of the response (e.g. the offending ``field``)."""
        return {}


class BadRequest(GatewayError):
    code = "bad_request"
    status = 400


class Unauthenticated(GatewayError):
    """RFC 6750 §3.1: ``invalid_token`` with a description, or, when the request carried no
    bearer credentials at all (``error=None``), a bare challenge without an error code."""

    code = "invalid_token"
    status = 401

    def __init__(self, description: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(description, code=error or "unauthenticated")
        self.error = error

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": _challenge(self.error, self.message)}


class MalformedCredentials(GatewayError):
    """RFC 6750 §3.1 ``invalid_request``: a Bearer header without exactly one token."""

    code = "invalid_request"
    status = 400

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": _challenge(self.code, self.message)}


def _challenge(error: str | None, description: str) -> str:
    if error is None:
        return 'Bearer realm="expie-gateway"'
    quoted = description.replace('"', "'")
    return f'Bearer realm="expie-gateway", error="{error}", error_description="{quoted}"'



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
    """``request_sent``: whether the exchange may have received the request (it may have acted
    on an order even though no answer came back); False when the connection never opened."""

    code = "upstream_unavailable"
    status = 502
    temporary = True

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class CircuitOpen(UpstreamUnavailable):
    """The circuit breaker of the upstream is open: the call was not sent."""

    code = "upstream_circuit_open"
    status = 503

    def __init__(self, retry_after: float) -> None:
        """``retry_after``: seconds until the next probe; 0 while a probe is in flight."""
        self.retry_after = max(1, math.ceil(retry_after))
        when = (f"the next probe is in {self.retry_after} s" if retry_after > 0
                else "a probe call is deciding now")
        super().__init__(f"the exchange is failing; calls to it are suspended and {when}")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamTimeout(GatewayError):
    code = "upstream_timeout"
    status = 504
    temporary = True

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class MalformedRequest(BadRequest):
    code = "malformed_request"


class RequestTimeout(GatewayError):
    code = "request_timeout"
    status = 408


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"
    status = 413


class UriTooLong(GatewayError):
    code = "uri_too_long"
    status = 414


class HeadersTooLarge(GatewayError):
    code = "headers_too_large"
    status = 431


class UpgradeRequired(GatewayError):
    """A plain request to the WebSocket endpoint (RFC 9110 §15.5.22)."""

    code = "upgrade_required"
    status = 426

    def headers(self) -> dict[str, str]:
        return {"Upgrade": "websocket", "Connection": "Upgrade"}


class InternalError(GatewayError):
    code = "internal_error"
    status = 500


class StoreUnavailable(GatewayError):
    code = "store_unavailable"
    status = 503
    temporary = True


class RiskLimitExceeded(Forbidden):
    """An order outside the desk's risk limits for this user and market (the message names it)."""

    code = "risk_limit_exceeded"


class IdempotencyInProgress(GatewayError):
    code = "idempotency_in_progress"
    status = 409
    temporary = True


class IdempotencyOutcomeUnknown(GatewayError):
    """The first request with this key was sent but its outcome never came back."""

    code = "idempotency_outcome_unknown"
    status = 409

    def __init__(self, message: str, audit_ref: str) -> None:
        super().__init__(message)
        self.audit_ref = audit_ref


class OrderNotPlaced(GatewayError):
    """Reconciled: the order whose outcome was unknown never reached the exchange's book."""

    code = "order_not_placed"
    status = 409


class OrderNotCancelled(GatewayError):
    """Reconciled: the cancel whose outcome was unknown did not take effect."""

    code = "order_not_cancelled"
    status = 409


class IdempotencyKeyReused(GatewayError):
    code = "idempotency_key_reused"
    status = 422


class TradingHalted(GatewayError):
    code = "kill_switch_engaged"
    status = 423


class RateLimited(GatewayError):
    """Over a limit: ``RateLimit-*`` headers (draft-ietf-httpapi-ratelimit-headers) and
    ``Retry-After``, in whole seconds rounded up so a client waiting that long is admitted."""

    code = "rate_limited"
    status = 429
    temporary = True

    def __init__(self, message: str, *, limit: int, retry_after: float, reset_after: float,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.limit = limit
        self.retry_after = retry_after
        self.reset_after = reset_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after))),
                "RateLimit-Limit": str(self.limit), "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(max(1, math.ceil(self.reset_after)))}


class StateLost(StoreUnavailable):
    """Redis lost the shared state (see ``gateway.core.cluster_state``).

    A ``StoreUnavailable`` so that whatever fails closed on a store failure (the write-ahead
    intent, the spools' retries) does so here too; unlike an outage it is not temporary: it lasts
    until an admin acknowledges the loss."""

    code = "state_lost"
    temporary = False


class StateNotLost(GatewayError):
    code = "state_not_lost"
    status = 409


class RecordsNotExported(GatewayError):
    """Acknowledging the loss would drop audit records of the old chain no export wrote out."""

    code = "records_not_exported"
    status = 409


class PersistenceRequired(GatewayError):
    """``redis.require_persistence``: the Redis at start keeps nothing on disk."""

    code = "persistence_required"
