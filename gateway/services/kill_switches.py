"""Engaging and releasing kill switches, and cancelling what they cover.

A switch stops new orders for the desk, one account or one user (``PreTradeChecks`` consults the
store); cancels still pass. Engaging may also cancel, at once, every pending order the switch
covers: all accounts' orders for the desk, one account's, or one user's own orders. Each such
cancel goes through the order desk (intent, outcome) and every change of a switch is audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.auth.secret import Secret
from gateway.auth.users import UserDirectory
from gateway.core.audit_chain import Kind, Outcome
from gateway.errors import GatewayError, NotFound
from gateway.services.audit_trail import AuditTrail
from gateway.services.call_context import CallContext, Step, audit_event
from gateway.services.market_data import MarketData
from gateway.services.order_desk import OrderDesk
from gateway.services.order_views import OrderViews
from gateway.stores.kill_switch import KillSwitch, KillSwitchStore, SwitchScope

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CancelReport:
    cancelled: int = 0
    failed: int = 0

    def to_wire(self) -> dict[str, int]:
        return {"cancelled": self.cancelled, "failed": self.failed}


class KillSwitches:
    def __init__(
        self, store: KillSwitchStore, *, desk: OrderDesk, views: OrderViews,
        market_data: MarketData, tokens: Mapping[str, Secret], directory: UserDirectory,
        audit: AuditTrail, clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._desk = desk
        self._views = views
        self._market_data = market_data
        self._tokens = tokens
        self._directory = directory
        self._audit = audit
        self._clock = clock

    def engaged(self) -> list[KillSwitch]:
        return self._store.engaged()

    @property
    def healthy(self) -> bool:
        """Whether the switches' shared state is in step (placing is refused while it is not)."""
        return self._store.healthy

    def check_target(self, scope: SwitchScope, target: str) -> None:
        """``NotFound`` unless ``target`` names an account or user the gateway knows."""
        if scope is SwitchScope.ACCOUNT and target not in self._tokens:
            raise NotFound(f"no upstream account {target!r}", code="unknown_account")
        if scope is SwitchScope.USER and self._directory.get(target) is None:
            raise NotFound(f"no user {target!r}", code="unknown_user")

    async def engage(
        self, context: CallContext, switch: KillSwitch, cancel_pending: bool
    ) -> CancelReport:
        self.check_target(switch.scope, switch.target)
        await self._store.engage(switch)
        await self._record(context, "kill_switch.engage", switch, cancel_pending)
        if not cancel_pending:
            return CancelReport()
        return await self._cancel_covered(context, switch)

    async def release(
        self, context: CallContext, scope: SwitchScope, target: str
    ) -> KillSwitch | None:
        released = await self._store.release(scope, target)
        if released is not None:
            await self._record(context, "kill_switch.release", released, False)
        return released

    async def _record(
        self, context: CallContext, action: str, switch: KillSwitch, cancel_pending: bool
    ) -> None:
        params = {"scope": switch.scope.value, "target": switch.target, "reason": switch.reason,
                  "cancel_pending": str(cancel_pending).lower()}
        await self._audit.record(audit_event(
            context, Step(Kind.ADMIN, action, None, params, outcome=Outcome.ACCEPTED), self._clock))

    async def _cancel_covered(self, context: CallContext, switch: KillSwitch) -> CancelReport:
        report = CancelReport()
        for account, owner in self._covered(switch):
            token = self._tokens[account]
            for market in sorted(await self._market_data.market_names(token)):
                report = await self._cancel_market(context, account, owner, market, report)
        return report

    def _covered(self, switch: KillSwitch) -> list[tuple[str, str | None]]:
        """(account, owner) pairs: whose orders the switch covers; owner None = all of them."""
        if switch.scope is SwitchScope.DESK:
            return [(account, None) for account in sorted(self._tokens)]
        if switch.scope is SwitchScope.ACCOUNT:
            return [(switch.target, None)]
        user = self._directory.get(switch.target)
        return [] if user is None else [(user.account, user.id)]

    async def _cancel_market(
        self, context: CallContext, account: str, owner: str | None, market: str,
        report: CancelReport,
    ) -> CancelReport:
        records = await self._views.account_pending(self._tokens[account], market)
        if owner is not None:
            owners = await self._views.owners(account, records)
            records = [r for r, o in zip(records, owners, strict=True) if o == owner]
        cancelled, failed = report.cancelled, report.failed
        for record in records:
            order_id = record["id"]
            if not isinstance(order_id, int):
                continue
            if await self._cancel_one(context, account, market, order_id):
                cancelled += 1
            else:
                failed += 1
        return CancelReport(cancelled, failed)

    async def _cancel_one(self, context: CallContext, account: str, market: str,
                          order_id: int) -> bool:
        try:
            answer = await self._desk.cancel_for_kill_switch(context, account, market, order_id)
        except GatewayError as exc:
            logger.warning("kill switch: cancel of order %d failed: %s", order_id, exc.message)
            return False
        return answer.status < 400
