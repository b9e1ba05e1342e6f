"""Desk administration: ``POST``/``GET /admin/kill-switch``, ``GET /admin/audit`` and
``POST /admin/state-loss/acknowledge``.

``POST /admin/kill-switch`` takes a JSON object: ``scope`` (``desk``, ``account`` or ``user``),
``target`` (the account or user; not for the desk), ``engaged`` (default true), ``reason``
(required to engage) and ``cancel_pending`` (default false: also cancel every pending order the
switch covers). ``POST /admin/state-loss/acknowledge`` takes ``{"reason": …}`` and answers the
first record of the new audit segment (``gateway.services.state_loss``). Every route needs the
``admin`` scope.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aiohttp import web

from gateway.core.wire import MAX_PAGE_VALUE, wire_integer
from gateway.errors import BadRequest
from gateway.keys import AUDIT_TRAIL, CLOCK, KILL_SWITCHES, PRINCIPAL, STATE_LOSS
from gateway.services.audit_trail import AuditQuery
from gateway.stores.kill_switch import KillSwitch, SwitchScope
from gateway.web.bodies import json_object
from gateway.web.exchange import check_query
from gateway.web.orders import call_context

_SWITCH_FIELDS = frozenset({"scope", "target", "engaged", "reason", "cancel_pending"})
_AUDIT_TEXT_FILTERS = ("user", "account", "market", "action", "kind", "outcome")
_AUDIT_QUERY = frozenset({*_AUDIT_TEXT_FILTERS, "since", "until", "after", "limit"})
MAX_AUDIT_PAGE = 1000
MAX_REASON = 500


async def set_kill_switch(request: web.Request) -> web.Response:
    body = await json_object(request, code="bad_kill_switch")
    unknown = sorted(set(body) - _SWITCH_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", code="bad_kill_switch")
    scope = _scope(body.get("scope"))
    target = _target(scope, body.get("target"))
    engaged = _flag(body, "engaged", default=True)
    switches = request.app[KILL_SWITCHES]
    context = call_context(request)
    if not engaged:
        released = await switches.release(context, scope, target)
        return web.json_response({"released": released.to_wire() if released else None})
    switch = KillSwitch(scope, target, _reason(body.get("reason")),
                        request[PRINCIPAL].user_id, request.app[CLOCK]())
    report = await switches.engage(context, switch, _flag(body, "cancel_pending", default=False))
    return web.json_response({"engaged": switch.to_wire(), "cancel_pending": report.to_wire()})


async def list_kill_switches(request: web.Request) -> web.Response:
    check_query(request, frozenset())
    return web.json_response(
        {"engaged": [switch.to_wire() for switch in request.app[KILL_SWITCHES].engaged()]})


async def audit_records(request: web.Request) -> web.Response:
    check_query(request, _AUDIT_QUERY)
    query = request.query
    limit = _integer(query, "limit", 100)
    if not 1 <= limit <= MAX_AUDIT_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_AUDIT_PAGE}", code="bad_query")
    texts = {name: query.get(name) for name in _AUDIT_TEXT_FILTERS}
    page = await request.app[AUDIT_TRAIL].search(AuditQuery(
        **texts, since=_time(query, "since"), until=_time(query, "until"),
        after_seq=_integer(query, "after", 0), limit=limit))
    return web.json_response({"records": [record.to_wire() for record in page.records],
                              "next_after": page.next_after})


async def acknowledge_state_loss(request: web.Request) -> web.Response:
    body = await json_object(request, code="bad_acknowledgement")
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", code="bad_acknowledgement")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise BadRequest(f"reason: required, what happened and who checked it (1 to "
                         f"{MAX_REASON} characters)", code="bad_acknowledgement")
    record = await request.app[STATE_LOSS].acknowledge(call_context(request), reason.strip())
    return web.json_response({"acknowledged": record.to_wire()})


def _scope(value: object) -> SwitchScope:
    try:
        return SwitchScope(str(value))
    except ValueError:
        raise BadRequest("scope: expected desk, account or user", code="bad_kill_switch") from None


def _target(scope: SwitchScope, value: object) -> str:
    if scope is SwitchScope.DESK:
        if value not in (None, ""):
            raise BadRequest("target: the desk scope takes no target", code="bad_kill_switch")
        return ""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"target: the {scope.value} to halt is required", code="bad_kill_switch")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON:
        raise BadRequest(f"reason: required to engage a kill switch (1 to {MAX_REASON} "
                         "characters)", code="bad_kill_switch")
    return value.strip()


def _flag(body: Mapping[str, object], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: expected true or false", code="bad_kill_switch")
    return value


def _integer(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    value = wire_integer(text, MAX_PAGE_VALUE)
    if value is None:
        raise BadRequest(f"query parameter {name!r} must be an integer from 0 to "
                         f"{MAX_PAGE_VALUE}", code="bad_query")
    return value


def _time(query: Mapping[str, str], name: str) -> float | None:
    """Seconds since the epoch (what the records' ``time`` holds)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadRequest(f"query parameter {name!r} must be seconds since the epoch",
                         code="bad_query")
    return value
