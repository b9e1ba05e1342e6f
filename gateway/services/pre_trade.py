"""The checks an order call passes before it may reach the exchange, in the desk's order:
kill switch (placing only) -> risk limits (placing only) -> rate limits of the user and of its
upstream account (one atomic decision over both, cluster-wide) -> pacing of the account.

Each refusal is a ``GatewayError`` (423, 403, 429). An admitted call gets the ``RateLimit-*``
headers of the tighter of its two limits. No aiohttp here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from gateway.auth.users import User
from gateway.core.orders import OrderRequest
from gateway.core.principal import Principal
from gateway.core.risk import check_order, needs_reference
from gateway.errors import TradingHalted
from gateway.order_settings import OrderSettings, RatePolicy
from gateway.services.pacing import AccountPacer
from gateway.stores.kill_switch import KillSwitch, KillSwitchStore, SwitchScope
from gateway.stores.rate_limits import Limit, LimitCheck, RateLimitStore, headers, to_error

ReferencePrice = Callable[[str, str], Awaitable[Decimal | None]]
"""The last trade price of ``market`` as seen with ``account``'s token; None when there is none."""


class PreTradeChecks:
    def __init__(
        self, settings: OrderSettings, kill_switch: KillSwitchStore, limits: RateLimitStore,
        pacer: AccountPacer, reference_price: ReferencePrice,
    ) -> None:
        self._settings = settings
        self._kill_switch = kill_switch
        self._limits = limits
        self._pacer = pacer
        self._reference_price = reference_price

    async def before_place(
        self, principal: Principal, user: User, order: OrderRequest
    ) -> dict[str, str]:
        switch = self._kill_switch.blocking(principal.account, principal.user_id)
        if switch is not None:
            raise TradingHalted(halted_message(switch))
        policy = user.risk.for_market(order.market)
        reference = (await self._reference_price(order.market, principal.account)
                     if needs_reference(order, policy) else None)
        check_order(order, policy, reference)
        return await self._admit(principal, "place", user.limits.place,
                                 self._settings.account_limits.place)

    async def before_cancel(self, principal: Principal, user: User) -> dict[str, str]:
        return await self._admit(principal, "cancel", user.limits.cancel,
                                 self._settings.account_limits.cancel)

    async def pace(self, account: str) -> None:
        await self._pacer.pace(account)

    async def _admit(
        self, principal: Principal, action: str, user_policy: RatePolicy,
        account_policy: RatePolicy,
    ) -> dict[str, str]:
        user_key = f"user:{principal.user_id}:{action}"
        decision = await self._limits.acquire((
            LimitCheck(user_key, Limit(user_policy.count, user_policy.window)),
            LimitCheck(f"account:{principal.account}:{action}",
                       Limit(account_policy.count, account_policy.window)),
        ))
        if not decision.allowed:
            who = (f"user {principal.user_id}" if decision.key == user_key
                   else f"account {principal.account}")
            raise to_error(decision, f"{action} limit of {who}")
        await self._pacer.pace(principal.account)
        return headers(decision)


def halted_message(switch: KillSwitch) -> str:
    what = ("the whole desk" if switch.scope is SwitchScope.DESK
            else f"{switch.scope.value} {switch.target}")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(switch.set_at))
    return (f"trading is halted for {what}: {switch.reason} (kill switch set by {switch.set_by} "
            f"at {when}); cancels still pass")
