"""The checks an order call passes before it may reach the exchange, in the desk's order:
the shared state (``require_shared_state``: every order call, a kill switch's cancels too, stops
with 503 ``state_lost`` while Redis has lost what the replicas saw) -> the screens
(``before_place``: kill switch, risk limits; ``before_cancel``) -> rate limits of the user and
of its upstream account (one atomic decision over both, cluster-wide) -> pacing of the account.

The rate limits are decided by ``admit`` for a call without an idempotency key; a keyed call
hands ``limit_checks`` to the idempotency claim, which decides them in the same step as the
claim (so a replay spends nothing), and renders a refusal with ``refusal``. Each refusal is a
``GatewayError`` (503, 423, 403, 429). An admitted call gets the ``RateLimit-*`` headers of the
tighter of its two limits. No aiohttp here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from gateway.auth.users import User
from gateway.core.cluster_state import ClusterState
from gateway.core.orders import OrderRequest
from gateway.core.principal import Principal
from gateway.core.risk import check_order, needs_reference
from gateway.errors import RateLimited, TradingHalted
from gateway.order_settings import OrderSettings
from gateway.services.pacing import AccountPacer
from gateway.stores.kill_switch import KillSwitch, KillSwitchStore, SwitchScope
from gateway.stores.rate_limits import (
    Decision,
    Limit,
    LimitCheck,
    RateLimitStore,
    headers,
    to_error,
)

ReferencePrice = Callable[[str, str], Awaitable[Decimal | None]]
"""The last trade price of ``market`` as seen with ``account``'s token; None when there is none."""


class PreTradeChecks:
    def __init__(
        self, settings: OrderSettings, kill_switch: KillSwitchStore, limits: RateLimitStore,
        pacer: AccountPacer, reference_price: ReferencePrice, state: ClusterState,
    ) -> None:
        self._settings = settings
        self._state = state
        self._kill_switch = kill_switch
        self._limits = limits
        self._pacer = pacer
        self._reference_price = reference_price

    def require_shared_state(self) -> None:
        """``StateLost`` while the shared state is lost: nothing may be claimed, limited or
        sent against a Redis that forgot what it held (a replay could be sent twice), and no
        intent can be chained."""
        self._state.check()

    async def before_place(self, principal: Principal, user: User, order: OrderRequest) -> None:
        """The screens of a new order: the kill switch, then the user's risk rules."""
        switch = self._kill_switch.blocking(principal.account, principal.user_id)
        if switch is not None:
            raise TradingHalted(halted_message(switch))
        policy = user.risk.for_market(order.market)
        reference = (await self._reference_price(order.market, principal.account)
                     if needs_reference(order, policy) else None)
        check_order(order, policy, reference)

    async def before_cancel(self, principal: Principal) -> None:
        """The screens of a cancel: none of the kill switch's (cancels always pass)."""

    def limit_checks(self, principal: Principal, user: User, action: str) -> tuple[LimitCheck, ...]:
        """The user's and its account's limits of ``action`` (place or cancel)."""
        user_policy = user.limits.place if action == "place" else user.limits.cancel
        account = self._settings.account_limits
        account_policy = account.place if action == "place" else account.cancel
        return (LimitCheck(_user_key(principal, action),
                           Limit(user_policy.count, user_policy.window)),
                LimitCheck(f"account:{principal.account}:{action}",
                           Limit(account_policy.count, account_policy.window)))

    async def admit(self, principal: Principal, action: str,
                    checks: tuple[LimitCheck, ...]) -> dict[str, str]:
        """Decide ``checks`` (429 when one is full), then pace; the ``RateLimit-*`` headers."""
        decision = await self._limits.acquire(checks)
        if not decision.allowed:
            raise self.refusal(principal, action, decision)
        await self._pacer.pace(principal.account)
        return headers(decision)

    def refusal(self, principal: Principal, action: str, decision: Decision) -> RateLimited:
        who = (f"user {principal.user_id}" if decision.key == _user_key(principal, action)
               else f"account {principal.account}")
        return to_error(decision, f"{action} limit of {who}")

    async def pace(self, account: str) -> None:
        await self._pacer.pace(account)


def _user_key(principal: Principal, action: str) -> str:
    return f"user:{principal.user_id}:{action}"


def halted_message(switch: KillSwitch) -> str:
    what = ("the whole desk" if switch.scope is SwitchScope.DESK
            else f"{switch.scope.value} {switch.target}")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(switch.set_at))
    return (f"trading is halted for {what}: {switch.reason} (kill switch set by {switch.set_by} "
            f"at {when}); cancels still pass")
