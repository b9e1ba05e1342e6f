"""Settling order calls whose outcome is unknown, from the exchange's own state.

An order call's outcome is unknown when the exchange took the request but its answer never came
back (a timeout, a dropped connection, a 5xx it may have acted on), or when the replica that sent
it died before recording the outcome (its intent stands alone in the audit trail; its idempotency
key's lease lapses). The ``Reconciler`` resolves both with ``gateway.core.reconcile``'s rules,
reading the account's pending and finished orders, and writes what it found where the gateway
keeps it: an outcome ``reconciled`` in the audit trail (its ``reason`` the verdict, its
``order_id`` the order), the idempotency key's answer (a replay then gets the order, or a
definite 409 ``order_not_placed`` / ``order_not_cancelled``) and a placed order's owner.

- Each replica reconciles the unknowns it produced (``report``), every ``interval`` seconds.
- One replica at a time, holding the ``ReconcileState`` lock, sweeps the trail from the shared
  cursor for intents that nobody settled: with no outcome ``grace`` seconds after the intent (a
  dead replica's), or reported unknown and still unsettled long after their replica should have
  given up on them.
- Until ``window`` seconds after its intent the exchange may still act on a call: only finding
  the order (placed, or cancelled) decides it. After that, what the lists show decides; a call
  they cannot decide (or an exchange that cannot be read) is tried ``max_tries`` times, then
  recorded ``unresolved`` (and counted): a human looks at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.auth.secret import Secret
from gateway.core.audit_chain import AuditEvent, AuditRecord, Kind, Outcome
from gateway.core.audit_event import new_event_id
from gateway.core.reconcile import (
    PlaceRequest,
    Resolution,
    Verdict,
    match_cancel,
    match_place,
)
from gateway.errors import GatewayError, OrderNotCancelled, OrderNotPlaced, StoreUnavailable
from gateway.order_settings import OrderSettings
from gateway.services.audit_trail import AuditTrail
from gateway.services.order_desk import Settlement
from gateway.services.order_views import OrderViews
from gateway.services.write_spool import WriteSpool
from gateway.stores.idempotency import IdempotencyStore, StoredResponse
from gateway.stores.ownership import OwnershipStore
from gateway.stores.reconcile_state import ReconcileState

logger = logging.getLogger(__name__)
ORDER_ACTIONS = frozenset({"place", "cancel"})
SETTLED = frozenset({Outcome.ACCEPTED, Outcome.REJECTED, Outcome.UPSTREAM_ERROR,
                     Outcome.RECONCILED, Outcome.UNRESOLVED})
_READ_BATCH = 1000
_MAX_READ = 20_000  # records one sweep reads; the next goes on from there
_JSON = "application/json"


class ReconcileEvents(Protocol):
    def reconciled(self, action: str, verdict: str) -> None: ...


@dataclass(slots=True)
class _Open:
    """An order call not settled yet, as the reconciler tracks it."""

    intent: AuditRecord
    tries: int = 0
    reported_unknown: bool = False  # its replica recorded "unknown" and reconciles it itself


class Reconciler:
    def __init__(
        self, settings: OrderSettings, *, trail: AuditTrail, idempotency: IdempotencyStore,
        ownership: OwnershipStore, views: OrderViews, tokens: Mapping[str, Secret],
        state: ReconcileState, settlements: WriteSpool[Settlement], events: ReconcileEvents,
        clock: Callable[[], float], holder: str, upstream_timeout: float,
    ) -> None:
        self._settings = settings
        self._trail = trail
        self._idempotency = idempotency
        self._ownership = ownership
        self._views = views
        self._tokens = tokens
        self._state = state
        self._settlements = settlements
        self._events = events
        self._clock = clock
        self._holder = holder
        self._window = settings.reconcile.window
        # An intent with no outcome this long after it was written has no replica waiting for
        # the exchange any more: the lease and the upstream timeout are both shorter.
        self._grace = max(settings.idempotency.lease, upstream_timeout) + settings.reconcile.skew
        self._own: dict[str, _Open] = {}
        self._swept: dict[str, _Open] = {}
        self._read_to: int | None = None  # None: not holding the lock
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Order calls this replica is still reconciling."""
        return len(self._own) + len(self._swept)

    def report(self, intent: AuditRecord) -> None:
        """An order call of this replica whose outcome is unknown."""
        self._own[intent.event.id] = _Open(intent, reported_unknown=True)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="order-reconciler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._read_to is not None:
            try:
                await self._state.release(self._holder)
            except StoreUnavailable:
                logger.warning("reconciler: the lock could not be released; it lapses by itself")

    async def run_once(self) -> None:
        """One round: this replica's own unknowns, then a sweep if it holds the lock."""
        for open_call in list(self._own.values()):
            if await self._attempt(open_call):
                del self._own[open_call.intent.event.id]
        try:
            holding = await self._state.acquire(self._holder, 3 * self._settings.reconcile.interval)
        except StoreUnavailable:
            holding = False
        if not holding:
            self._read_to = None
            self._swept.clear()
            return
        await self._sweep()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reconcile.interval)
            try:
                await self.run_once()
            except (GatewayError, OSError) as exc:
                logger.warning("reconciler: this round failed (%s); trying again", exc)

    async def _sweep(self) -> None:
        if self._read_to is None:
            self._read_to = await self._state.cursor()
        read = 0
        while read < _MAX_READ:
            page = await self._trail.read(self._read_to, _READ_BATCH)
            for record in page:
                self._track(record)
                self._read_to = record.seq
            read += len(page)
            if len(page) < _READ_BATCH:
                break
        now = self._clock()
        give_up_after = self._grace + self._settings.reconcile.max_tries * (
            self._settings.reconcile.interval) + self._grace
        for intent_id, open_call in list(self._swept.items()):
            age = now - open_call.intent.event.time
            due = age > (give_up_after if open_call.reported_unknown else self._grace)
            if due and intent_id not in self._own and await self._attempt(open_call):
                del self._swept[intent_id]
        oldest = min((call.intent.seq for call in self._swept.values()), default=None)
        await self._state.set_cursor(self._read_to if oldest is None else oldest - 1)

    def _track(self, record: AuditRecord) -> None:
        event = record.event
        if event.action not in ORDER_ACTIONS:
            return
        if event.kind is Kind.INTENT:
            self._swept[event.id] = _Open(record)
        elif event.kind is Kind.OUTCOME and event.intent_id in self._swept:
            if event.outcome in SETTLED:
                del self._swept[event.intent_id]
            else:
                self._swept[event.intent_id].reported_unknown = True

    async def _attempt(self, open_call: _Open) -> bool:
        """Try to settle ``open_call``; True once it is settled (or given up on)."""
        event = open_call.intent.event
        try:
            resolution = await self._resolve(event)
        except (GatewayError, ValueError) as exc:
            logger.warning("reconciler: %s %s (intent %s) could not be checked: %s",
                           event.action, event.market, event.id, exc)
            resolution = Resolution(Verdict.UNDECIDED)
        if self._clock() < event.time + self._window + self._settings.reconcile.skew:
            # The exchange may still act on it: only finding the order decides, and waiting
            # is not a failed try.
            if resolution.verdict in (Verdict.PLACED, Verdict.CANCELLED):
                await self._settle(event, resolution)
                return True
            return False
        if resolution.verdict is not Verdict.UNDECIDED:
            await self._settle(event, resolution)
            return True
        open_call.tries += 1
        if open_call.tries >= self._settings.reconcile.max_tries:
            await self._give_up(event)
            return True
        return False

    async def _resolve(self, intent: AuditEvent) -> Resolution:
        if intent.account is None or intent.market is None:
            raise ValueError("an order intent without account or market")
        token = self._tokens[intent.account]
        skew = self._settings.reconcile.skew
        pending = await self._views.account_pending(token, intent.market)
        if intent.action == "cancel":
            order_id = int(intent.params["order_id"])
            finished = await self._views.account_finished_until(
                token, intent.market, lambda record: _older_than(record, order_id))
            traded = await self._views.order_has_deals(token, intent.market, order_id)
            return match_cancel(order_id, pending, finished, traded)
        request = PlaceRequest.from_params(intent.market, intent.params, intent.time)
        finished = await self._views.account_finished_until(
            token, intent.market, lambda record: _created_before(record, intent.time - skew))
        candidates = [*pending, *finished]
        return match_place(request, candidates, await self._attributed(intent, candidates),
                           window=self._window, skew=skew)

    async def _attributed(self, intent: AuditEvent, records: list[dict[str, object]]
                          ) -> set[int]:
        """Orders among ``records`` that have an owner: each was attributed to the call that
        placed it (its owner is written with its outcome), so none is this call's."""
        owners = await self._views.owners(intent.account or "", records)
        return {record["id"] for record, owner in zip(records, owners, strict=True)
                if owner is not None and isinstance(record["id"], int)}

    async def _settle(self, intent: AuditEvent, resolution: Resolution) -> None:
        # A cancel's outcome names its order, even one the exchange keeps no record of.
        order_id = (int(intent.params["order_id"]) if intent.action == "cancel"
                    else resolution.order_id)
        await self._trail.record(self._outcome(intent, Outcome.RECONCILED,
                                               resolution.verdict.value, order_id))
        self._events.reconciled(intent.action, resolution.verdict.value)
        logger.info("reconciler: %s %s (intent %s) was %s%s", intent.action, intent.market,
                    intent.id, resolution.verdict.value,
                    "" if order_id is None else f" (order {order_id})")
        if intent.user is not None and intent.idempotency_key is not None:
            response = _answer(intent, resolution)
            await self._settlements.put(Settlement(
                f"idempotency key of {intent.user} reconciled (intent {intent.id})",
                functools.partial(self._idempotency.complete, intent.user,
                                  intent.idempotency_key, response,
                                  self._settings.idempotency.ttl)))
        if (resolution.verdict is Verdict.PLACED and order_id is not None
                and intent.user is not None and intent.account is not None):
            await self._settlements.put(Settlement(
                f"owner {intent.user} of reconciled order {order_id}",
                functools.partial(self._ownership.record, intent.account, order_id,
                                  intent.user)))

    async def _give_up(self, intent: AuditEvent) -> None:
        await self._trail.record(self._outcome(intent, Outcome.UNRESOLVED, "undecided", None))
        self._events.reconciled(intent.action, Outcome.UNRESOLVED.value)
        logger.error("reconciler: %s %s (intent %s) is unresolved after %d tries: check the "
                     "account's orders by hand", intent.action, intent.market, intent.id,
                     self._settings.reconcile.max_tries)

    def _outcome(self, intent: AuditEvent, outcome: Outcome, reason: str,
                 order_id: int | None) -> AuditEvent:
        return dataclasses.replace(
            intent, kind=Kind.OUTCOME, outcome=outcome, reason=reason, order_id=order_id,
            intent_id=intent.id, time=self._clock(), id=new_event_id(), latency_ms=None,
            upstream_status=None)


def _older_than(record: Mapping[str, object], order_id: int) -> bool:
    found = record.get("id")
    return isinstance(found, int) and found < order_id  # ids grow: the list is newest first


def _created_before(record: Mapping[str, object], since: float) -> bool:
    ctime = record.get("ctime")
    return isinstance(ctime, int | float) and ctime < since


def _answer(intent: AuditEvent, resolution: Resolution) -> StoredResponse:
    """What a replay of the call gets from now on."""
    if resolution.record is not None and resolution.verdict in (Verdict.PLACED,
                                                                Verdict.CANCELLED):
        return StoredResponse(200, json.dumps(dict(resolution.record)).encode(), _JSON)
    if resolution.verdict is Verdict.CANCELLED:
        # Cancelled untraded: the exchange keeps no record of the order to answer with.
        untraded = {"id": int(intent.params["order_id"]), "market": intent.market,
                    "deal_stock": "0", "reconciled": Verdict.CANCELLED.value}
        return StoredResponse(200, json.dumps(untraded).encode(), _JSON)
    key = intent.idempotency_key
    error: GatewayError
    if resolution.verdict is Verdict.NOT_CANCELLED:
        error = OrderNotCancelled(
            f"the cancel sent with Idempotency-Key {key!r} did not take effect (reconciled "
            "with the exchange): the order is still pending; cancel it again with a new key")
    else:
        error = OrderNotPlaced(
            f"the order sent with Idempotency-Key {key!r} never reached the exchange's book "
            "(reconciled with the exchange); send it again with a new key")
    body = {"error": {"code": error.code, "message": error.message,
                      "request_id": intent.request_id, "audit_ref": intent.id}}
    return StoredResponse(error.status, json.dumps(body).encode(), _JSON)
