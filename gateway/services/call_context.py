"""Who made an order call and how: what every audit record of that call repeats.

``CallContext`` is built once per request by the web edge; ``audit_event`` turns it and the facts
of one step (intent, outcome, refusal) into an ``AuditEvent``. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.core.audit_chain import AuditEvent, Kind, Outcome
from gateway.core.principal import Principal


@dataclass(frozen=True, slots=True)
class CallContext:
    # None when the call was refused before its caller was known (a bad or missing token).
    principal: Principal | None
    request_id: str
    trace_id: str
    client: str | None
    user_agent: str | None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Step:
    """The facts of one audited step of a call."""

    kind: Kind
    action: str
    market: str | None
    params: Mapping[str, str]
    idempotency_key: str | None = None
    outcome: Outcome | None = None
    reason: str | None = None
    upstream_status: int | None = None
    order_id: int | None = None
    intent_id: str | None = None
    # The account acted on, when it is not the caller's own (a kill switch cancelling another's).
    account: str | None = None


def audit_event(context: CallContext, step: Step, clock: Callable[[], float]) -> AuditEvent:
    principal = context.principal
    latency = None if step.kind is Kind.INTENT else (time.monotonic() - context.started) * 1000
    return AuditEvent(
        kind=step.kind, action=step.action, time=clock(), request_id=context.request_id,
        trace_id=context.trace_id, user=principal.user_id if principal else None,
        token_id=principal.token_id if principal else None,
        account=step.account or (principal.account if principal else None), client=context.client,
        user_agent=context.user_agent, market=step.market, params=step.params,
        idempotency_key=step.idempotency_key, outcome=step.outcome, reason=step.reason,
        upstream_status=step.upstream_status, order_id=step.order_id,
        latency_ms=None if latency is None else round(latency, 3), intent_id=step.intent_id,
    )
