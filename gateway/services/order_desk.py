"""The order desk: placing and cancelling orders for the desk's users, once, audited.

One journey for both calls (``_submit``): the shared state (503 ``state_lost`` while Redis has
lost it, a kill switch's cancels included) -> the screens (kill switch and risk for a place, the
owner for a cancel) -> the idempotency claim and the rate limits, decided in one atomic step (a
replay is answered from the store before any limit or pacing is spent) -> pacing -> audit
*intent*, durably stored, or the call is refused with 503 and never sent -> the exchange, with
the account's token (the claim's lease renewed while it waits) -> audit *outcome* -> the owner of
a new order and the idempotent result are remembered. Every refusal on the way is audited and
reaches the caller as the ``GatewayError`` it is; errors from the exchange pass through unchanged.

Outcomes: 2xx accepted; 4xx rejected; 502/503, or a connection that never opened, an upstream
error the exchange did not act on (an idempotency key is then released, so a retry is fresh);
anything else — a timeout after sending, a dropped connection, another 5xx — unknown: the key
remembers that and a replay answers 409 with the intent's audit id instead of guessing. The
outcome, the key's result and the owner are written through spools: a store that is down for a
while delays them, never drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.auth.secret import Secret
from gateway.auth.users import User, UserDirectory
from gateway.core.audit_chain import AuditEvent, AuditRecord, Kind, Outcome
from gateway.core.orders import (
    FORM_CONTENT_TYPE,
    MarketRules,
    market_rules,
    parse_order_fields,
    validate_order,
)
from gateway.core.principal import Principal
from gateway.errors import (
    GatewayError,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    NotFound,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.order_settings import OrderSettings
from gateway.services.audit_trail import AuditTrail
from gateway.services.call_context import CallContext, Step, audit_event
from gateway.services.market_data import Endpoint, MarketData
from gateway.services.pre_trade import PreTradeChecks
from gateway.services.write_spool import WriteSpool
from gateway.stores.idempotency import Claim, ClaimState, IdempotencyStore, StoredResponse
from gateway.stores.ownership import OwnershipStore
from gateway.stores.rate_limits import LimitCheck, headers
from gateway.upstream.rest import UpstreamClient, UpstreamResponse

logger = logging.getLogger(__name__)
NOT_ACTED_ON = frozenset({502, 503})
_MAX_FIELD = 64
_MAX_FIELDS = 8
_FIRST_POLL = 0.01
_MAX_POLL = 0.2


class DeskEvents(Protocol):
    """Where the desk reports what metrics count."""

    def sent(self, action: str, outcome: str) -> None: ...

    def refused(self, action: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DeskAnswer:
    status: int
    body: bytes
    content_type: str | None
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Submission:
    account: str
    action: str
    market: str
    params: Mapping[str, str]
    fingerprint: str
    path: str
    body: bytes | None
    content_type: str | None
    idempotency_key: str | None
    screen: Callable[[], Awaitable[None]]  # refusals that need no shared state spent
    limits: tuple[LimitCheck, ...]  # the rate limits to spend (none for a kill switch's cancel)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A write the desk owes after an order call: the idempotency key's result or the owner of a
    new order. Spooled until its store takes it."""

    what: str
    write: Callable[[], Awaitable[object]]

    async def run(self) -> None:
        await self.write()


class OrderDesk:
    def __init__(
        self, settings: OrderSettings, *, upstream: UpstreamClient,
        tokens: Mapping[str, Secret], directory: UserDirectory, market_data: MarketData,
        checks: PreTradeChecks, audit: AuditTrail, idempotency: IdempotencyStore,
        ownership: OwnershipStore, clock: Callable[[], float], events: DeskEvents,
        settlements: WriteSpool[Settlement], unknowns: Callable[[AuditRecord], None],
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._tokens = tokens
        self._directory = directory
        self._market_data = market_data
        self._checks = checks
        self._audit = audit
        self._idempotency = idempotency
        self._ownership = ownership
        self._clock = clock
        self._events = events
        self._settlements = settlements
        self._unknowns = unknowns
        self._rules: tuple[bytes, dict[str, MarketRules]] = (b"", {})

    async def place(
        self, context: CallContext, market: str, body: bytes, content_type: str | None,
        idempotency_key: str | None,
    ) -> DeskAnswer:
        principal = _known(context)
        fields: dict[str, str] = {}
        try:
            rules = await self._market_rules(market, principal.account)
            fields = parse_order_fields(body, content_type)
            order = validate_order(market, fields, rules)
        except GatewayError as exc:
            await self.refused(context, "place", market, _as_submitted(fields), exc,
                               idempotency_key)
            raise
        user = self._user(principal)
        return await self._submit(context, _Submission(
            principal.account, "place", market, order.params(), order.fingerprint(),
            f"/v1/markets/{market}/orders", order.form_body(), FORM_CONTENT_TYPE,
            idempotency_key, lambda: self._checks.before_place(principal, user, order),
            self._checks.limit_checks(principal, user, "place")))

    async def cancel(
        self, context: CallContext, market: str, order_id: int, idempotency_key: str | None
    ) -> DeskAnswer:
        principal = _known(context)
        try:
            await self._market_data.require_market(market, self._tokens[principal.account])
        except GatewayError as exc:
            await self.refused(context, "cancel", market, {"order_id": str(order_id)}, exc,
                               idempotency_key)
            raise
        user = self._user(principal)

        async def owned() -> None:
            await self._checks.before_cancel(principal)
            await self.require_owner(principal, order_id)

        return await self._submit(context, self._cancel_submission(
            principal.account, market, order_id, idempotency_key, owned,
            self._checks.limit_checks(principal, user, "cancel")))

    async def cancel_for_kill_switch(
        self, context: CallContext, account: str, market: str, order_id: int
    ) -> DeskAnswer:
        """A cancel on behalf of a kill switch: audited like any, paced, not rate-limited."""

        async def nothing() -> None:
            return None

        return await self._submit(
            context, self._cancel_submission(account, market, order_id, None, nothing, ()))

    async def require_owner(self, principal: Principal, order_id: int) -> None:
        """``NotFound`` unless ``principal`` may see order ``order_id`` of its account."""
        if principal.desk_wide:
            return
        owner = (await self._ownership.owners(principal.account, [order_id]))[0]
        if owner != principal.user_id:
            raise NotFound(f"order {order_id} not found", code="order_not_found")

    async def refused(
        self, context: CallContext, action: str, market: str | None, params: Mapping[str, str],
        error: GatewayError, idempotency_key: str | None = None,
    ) -> None:
        self._events.refused(action, error.code)
        await self._audit.record(audit_event(context, Step(
            Kind.REFUSAL, action, market, params, idempotency_key, Outcome.REJECTED,
            reason=error.code, upstream_status=None), self._clock))

    def _cancel_submission(
        self, account: str, market: str, order_id: int, idempotency_key: str | None,
        screen: Callable[[], Awaitable[None]], limits: tuple[LimitCheck, ...],
    ) -> _Submission:
        fingerprint = hashlib.sha256(f"cancel\0{market}\0{order_id}".encode()).hexdigest()
        return _Submission(
            account, "cancel", market, {"order_id": str(order_id)}, fingerprint,
            f"/v1/markets/{market}/orders/{order_id}/_cancel", None, None, idempotency_key,
            screen, limits)

    async def _submit(self, context: CallContext, submission: _Submission) -> DeskAnswer:
        key = submission.idempotency_key
        # Built before the claim so the claim can name it: a lapsed claim points at its intent.
        intent_event = audit_event(context, self._step(submission, Kind.INTENT), self._clock)
        try:
            self._checks.require_shared_state()
            screened = await _attempt(submission.screen)
            if key is None:
                if screened is not None:
                    raise screened
                admitted = await self._admit(context, submission)
            else:
                claimed = await self._claim(context, submission, key, intent_event, screened)
                if isinstance(claimed, DeskAnswer):
                    return claimed
                admitted = claimed
        except GatewayError as exc:
            await self.refused(context, submission.action, submission.market,
                               submission.params, exc, key)
            raise
        async with self._lease(context, key):
            try:
                if key is not None:
                    await self._checks.pace(submission.account)
                intent = await self._audit.write_ahead(intent_event)
            except GatewayError as exc:
                await self._release(context, key)
                await self.refused(context, submission.action, submission.market,
                                   submission.params, exc, key)
                raise
            return await self._forward(context, submission, intent, admitted)

    async def _admit(self, context: CallContext, submission: _Submission) -> dict[str, str]:
        """An unkeyed call's limits and pacing; its ``RateLimit-*`` headers."""
        if not submission.limits:
            await self._checks.pace(submission.account)
            return {}
        return await self._checks.admit(_known(context), submission.action, submission.limits)

    async def _claim(
        self, context: CallContext, submission: _Submission, key: str, intent: AuditEvent,
        screened: GatewayError | None,
    ) -> DeskAnswer | dict[str, str]:
        """The stored answer for a replay; else this call owns ``key`` now (its limits spent)
        and gets its ``RateLimit-*`` headers. Refusals raise."""
        claim = await self._wait_for_claim(context, submission, key, intent.id, screened is None)
        if claim.state is ClaimState.NEW:
            return headers(claim.decision) if claim.decision is not None else {}
        if claim.state is ClaimState.REPLAY and claim.response is not None:
            stored = claim.response
            return DeskAnswer(stored.status, stored.body, stored.content_type,
                              {"Idempotent-Replayed": "true"})
        if claim.state is ClaimState.ABSENT:
            if screened is not None:
                raise screened
            if claim.decision is not None:
                raise self._checks.refusal(_known(context), submission.action, claim.decision)
        raise _claim_error(claim, key)

    async def _wait_for_claim(
        self, context: CallContext, submission: _Submission, key: str, intent_ref: str,
        screened: bool,
    ) -> Claim:
        """The claim, waiting (bounded) while another call with the same key is in flight."""
        settings = self._settings.idempotency
        deadline = asyncio.get_running_loop().time() + settings.wait
        pause = _FIRST_POLL
        while True:
            claim = await self._idempotency.claim(
                _known(context).user_id, key, submission.fingerprint, settings.ttl,
                lease=settings.lease, intent_ref=intent_ref, checks=submission.limits,
                screened=screened)
            if (claim.state is not ClaimState.IN_FLIGHT
                    or asyncio.get_running_loop().time() + pause > deadline):
                return claim
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)

    @contextlib.asynccontextmanager
    async def _lease(self, context: CallContext, key: str | None) -> AsyncIterator[None]:
        """While the body runs, the claim of ``key`` is renewed every third of its lease."""
        if key is None:
            yield
            return
        renewing = asyncio.create_task(self._renew(_known(context).user_id, key))
        try:
            yield
        finally:
            renewing.cancel()
            await asyncio.wait([renewing])

    async def _renew(self, user: str, key: str) -> None:
        lease = self._settings.idempotency.lease
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self._idempotency.renew(user, key, lease)
            except StoreUnavailable:
                # Retried at the next third; if the lease lapses the key reads "unknown" and
                # the reconciler settles it from the exchange's own state.
                logger.warning("the idempotency lease of %s could not be renewed", user)

    async def _forward(
        self, context: CallContext, submission: _Submission, intent: AuditRecord,
        headers: dict[str, str],
    ) -> DeskAnswer:
        try:
            answer = await self._upstream.send(
                "POST", submission.path, self._tokens[submission.account], submission.body,
                submission.content_type)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            outcome = Outcome.UNKNOWN if exc.request_sent else Outcome.UPSTREAM_ERROR
            await self._settle(context, submission, intent, outcome, None, exc.code)
            raise
        await self._settle(context, submission, intent, _outcome_of(answer.status), answer, None)
        return DeskAnswer(answer.status, answer.body, answer.content_type, headers)

    async def _settle(
        self, context: CallContext, submission: _Submission, intent: AuditRecord,
        outcome: Outcome, answer: UpstreamResponse | None, reason: str | None,
    ) -> None:
        """The outcome record, the idempotency key and a new order's owner, written together
        (none of them raises: each is spooled when its store fails); an unknown outcome goes to
        the reconciler."""
        principal = _known(context)
        if outcome is Outcome.UNKNOWN:
            self._unknowns(intent)
        order_id = _order_id(answer) if outcome is Outcome.ACCEPTED and answer else None
        step = replace(self._step(submission, Kind.OUTCOME), outcome=outcome, reason=reason,
                       upstream_status=answer.status if answer else None,
                       order_id=order_id, intent_id=intent.event.id)
        self._events.sent(submission.action, outcome.value)
        writes = [self._audit.record(audit_event(context, step, self._clock))]
        key = submission.idempotency_key
        if key is not None:
            writes.append(self._settle_key(principal.user_id, key, outcome, answer, intent))
        if order_id is not None and submission.action == "place":
            writes.append(self._remember_owner(principal, order_id))
        await asyncio.gather(*writes)

    async def _settle_key(
        self, user: str, key: str, outcome: Outcome, answer: UpstreamResponse | None,
        intent: AuditRecord,
    ) -> None:
        ttl = self._settings.idempotency.ttl
        store = self._idempotency
        if outcome is Outcome.UNKNOWN:
            write = functools.partial(store.mark_unknown, user, key, intent.event.id, ttl)
            what = "unknown"
        elif outcome is Outcome.UPSTREAM_ERROR or answer is None:
            write, what = functools.partial(store.release, user, key), "released"
        else:
            response = StoredResponse(answer.status, answer.body, answer.content_type)
            write, what = functools.partial(store.complete, user, key, response, ttl), "answered"
        await self._settlements.put(Settlement(
            f"idempotency key of {user} {what} (intent {intent.event.id})", write))

    async def _release(self, context: CallContext, key: str | None) -> None:
        if key is None:
            return
        user = _known(context).user_id
        await self._settlements.put(Settlement(
            f"idempotency key of {user} released (refused before sending)",
            functools.partial(self._idempotency.release, user, key)))

    async def _remember_owner(self, principal: Principal, order_id: int) -> None:
        await self._settlements.put(Settlement(
            f"owner {principal.user_id} of order {order_id}",
            functools.partial(self._ownership.record, principal.account, order_id,
                              principal.user_id)))

    async def _market_rules(self, market: str, account: str) -> MarketRules:
        answer = await self._market_data.fetch(Endpoint.MARKETS, None, self._tokens[account])
        if answer.status != 200:
            raise UpstreamUnavailable(
                f"the exchange's markets list is unavailable (status {answer.status})")
        if answer.body is not self._rules[0]:
            self._rules = (answer.body, market_rules(answer.body))
        rules = self._rules[1].get(market)
        if rules is None:
            raise NotFound(f"unknown market {market}", code="unknown_market")
        return rules

    def _user(self, principal: Principal) -> User:
        user = self._directory.get(principal.user_id)
        if user is None:
            raise NotFound(f"no user {principal.user_id}", code="unknown_user")
        return user

    @staticmethod
    def _step(submission: _Submission, kind: Kind) -> Step:
        return Step(kind, submission.action, submission.market, submission.params,
                    submission.idempotency_key, account=submission.account)


def _known(context: CallContext) -> Principal:
    if context.principal is None:
        raise RuntimeError("an order call reached the desk without an authenticated caller")
    return context.principal


async def _attempt(screen: Callable[[], Awaitable[None]]) -> GatewayError | None:
    """The refusal ``screen`` raised, or None (a replay is answered even when it refuses)."""
    try:
        await screen()
    except GatewayError as exc:
        return exc
    return None


def _as_submitted(fields: Mapping[str, str]) -> dict[str, str]:
    """A refused order's fields as they came (bounded), for the audit record."""
    return {name[:_MAX_FIELD]: value[:_MAX_FIELD]
            for name, value in list(fields.items())[:_MAX_FIELDS]}


def _claim_error(claim: Claim, key: str) -> GatewayError:
    if claim.state is ClaimState.CONFLICT:
        return IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used with a different request")
    if claim.state is ClaimState.UNKNOWN:
        ref = claim.audit_ref or ""
        return IdempotencyOutcomeUnknown(
            f"the request first sent with Idempotency-Key {key!r} reached the exchange but its "
            f"outcome is unknown; check the audit record {ref} and the order lists before "
            "retrying with a new key", ref)
    return IdempotencyInProgress(
        f"a request with Idempotency-Key {key!r} is still in progress; retry later")


def _outcome_of(status: int) -> Outcome:
    if status < 400:
        return Outcome.ACCEPTED
    if status < 500:
        return Outcome.REJECTED
    return Outcome.UPSTREAM_ERROR if status in NOT_ACTED_ON else Outcome.UNKNOWN


def _order_id(answer: UpstreamResponse) -> int | None:
    try:
        order_id = json.loads(answer.body).get("id")
    except (ValueError, AttributeError):
        return None
    return order_id if isinstance(order_id, int) and not isinstance(order_id, bool) else None
