"""What an audit record says: the event, its canonical JSON, and parsing it back.

Owns ``AuditEvent`` (with ``Kind`` and ``Outcome``) and the canonical form the record digest
covers: sorted keys, no spaces, ASCII, fields that are None left out (so adding an optional field
later does not change the digest of old records). Values are normalized when an event is made
(floats, enums, a plain dict of strings) so an event and its parsed copy give the same bytes.

Pure: no I/O, no clock. It does not know about the chain (``gateway.core.audit_chain``), which
re-exports these names: callers import them from there.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

_REQUIRED_TEXT = ("action", "request_id", "trace_id", "id")
_OPTIONAL_TEXT = ("user", "token_id", "account", "client", "user_agent", "market",
                  "idempotency_key", "reason", "intent_id")


class MalformedRecord(ValueError):
    """A stored line that is not an audit record; the message names what is wrong."""


class Kind(StrEnum):
    INTENT = "intent"
    OUTCOME = "outcome"
    REFUSAL = "refusal"
    ADMIN = "admin"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UPSTREAM_ERROR = "upstream_error"
    UNKNOWN = "unknown"
    RECONCILED = "reconciled"  # settled later from the exchange's state; ``reason`` says how
    UNRESOLVED = "unresolved"  # the reconciler gave up: someone must look


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened. Values are normalized on creation (floats, enums, a plain dict of
    strings), so the canonical form of an event and of its parsed copy are the same bytes."""

    kind: Kind
    action: str  # "place", "cancel", "kill_switch", ...
    time: float  # wall clock, seconds since the epoch
    request_id: str
    trace_id: str
    user: str | None
    token_id: str | None
    account: str | None
    client: str | None  # client address
    user_agent: str | None
    market: str | None
    params: Mapping[str, str]  # normalized parameters
    idempotency_key: str | None = None
    outcome: Outcome | None = None  # None on intents
    reason: str | None = None  # error code of a refusal or rejection
    upstream_status: int | None = None
    order_id: int | None = None
    latency_ms: float | None = None
    intent_id: str | None = None  # an outcome names its intent's id
    id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.outcome is not None:
            object.__setattr__(self, "outcome", Outcome(self.outcome))
        object.__setattr__(self, "time", _finite("time", self.time))
        if self.latency_ms is not None:
            object.__setattr__(self, "latency_ms", _finite("latency_ms", self.latency_ms))
        params = dict(self.params)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
            raise TypeError("audit event params must map strings to strings")
        object.__setattr__(self, "params", params)

    def to_dict(self) -> dict[str, object]:
        """Every field, None included (the wire form)."""
        return {
            "id": self.id, "kind": self.kind.value, "action": self.action, "time": self.time,
            "request_id": self.request_id, "trace_id": self.trace_id, "user": self.user,
            "token_id": self.token_id, "account": self.account, "client": self.client,
            "user_agent": self.user_agent, "market": self.market, "params": dict(self.params),
            "idempotency_key": self.idempotency_key,
            "outcome": None if self.outcome is None else self.outcome.value,
            "reason": self.reason, "upstream_status": self.upstream_status,
            "order_id": self.order_id, "latency_ms": self.latency_ms, "intent_id": self.intent_id,
        }

    def canonical_json(self) -> str:
        """Sorted keys, no spaces, None fields left out: the bytes the digest covers."""
        present = {name: value for name, value in self.to_dict().items() if value is not None}
        return json.dumps(present, sort_keys=True, separators=(",", ":"), allow_nan=False)


def event_from_dict(data: object) -> AuditEvent:
    """The event of a parsed record; ``ValueError`` naming the bad field."""
    if not isinstance(data, dict):
        raise MalformedRecord("audit record: event must be an object")
    unknown = data.keys() - _EVENT_FIELDS
    if unknown:
        raise MalformedRecord(f"audit event: unknown field {sorted(unknown)[0]!r}")
    text = {name: _text(data, name) for name in _REQUIRED_TEXT}
    optional = {name: _optional_text(data, name) for name in _OPTIONAL_TEXT}
    outcome = _optional_text(data, "outcome")
    latency = data.get("latency_ms")
    try:
        return AuditEvent(
            kind=Kind(_text(data, "kind")), action=text["action"], time=_number(data, "time"),
            request_id=text["request_id"], trace_id=text["trace_id"], user=optional["user"],
            token_id=optional["token_id"], account=optional["account"],
            client=optional["client"], user_agent=optional["user_agent"],
            market=optional["market"], params=_params(data.get("params")),
            idempotency_key=optional["idempotency_key"],
            outcome=None if outcome is None else Outcome(outcome), reason=optional["reason"],
            upstream_status=_optional_int(data, "upstream_status"),
            order_id=_optional_int(data, "order_id"),
            latency_ms=None if latency is None else _number(data, "latency_ms"),
            intent_id=optional["intent_id"], id=text["id"])
    except MalformedRecord:
        raise
    except (TypeError, ValueError) as exc:  # a bad kind or outcome, params not strings
        raise MalformedRecord(f"audit event: {exc}") from exc


_EVENT_FIELDS = frozenset(AuditEvent.__dataclass_fields__)


def _text(data: dict[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise MalformedRecord(f"audit event: {name} must be a string")
    return value


def _optional_text(data: dict[str, object], name: str) -> str | None:
    return None if data.get(name) is None else _text(data, name)


def _number(data: dict[str, object], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedRecord(f"audit event: {name} must be a number")
    return float(value)


def _optional_int(data: dict[str, object], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise MalformedRecord(f"audit event: {name} must be an integer")
    return value


def _params(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise MalformedRecord("audit event: params must be an object")
    return value


def _finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"audit event: {name} must be finite")
    return number
