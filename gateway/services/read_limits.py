"""Per-user limits on reads: order and balance reads, and market data (looser, and hotter).

They protect the gateway and the exchange from one runaway reader. They are kept in this process
(``MemoryRateLimitStore``), not in Redis: a shared decision would cost a Redis round trip on the
cache-served market-data path, which answers in tens of microseconds. With N replicas behind a
balancer, a user can therefore read up to N times its limit; order calls are the ones limited
cluster-wide.
"""

from __future__ import annotations

from gateway.auth.users import UserDirectory
from gateway.core.principal import Principal
from gateway.stores.rate_limits import Limit, LimitCheck, RateLimitStore, to_error


class ReadLimits:
    def __init__(self, store: RateLimitStore, directory: UserDirectory) -> None:
        self._store = store
        self._directory = directory
        # The checks of each (user, market data?), built once: this runs on every read.
        self._checks: dict[tuple[str, bool], tuple[LimitCheck, str] | None] = {}

    async def admit(self, principal: Principal, market_data: bool) -> None:
        """Raises ``RateLimited`` when ``principal`` is over its read limit."""
        key = (principal.user_id, market_data)
        if key not in self._checks:
            self._checks[key] = self._build(*key)
        built = self._checks[key]
        if built is None:
            return
        check, what = built
        decision = await self._store.acquire((check,))
        if not decision.allowed:
            raise to_error(decision, what)

    def _build(self, user_id: str, market_data: bool) -> tuple[LimitCheck, str] | None:
        user = self._directory.get(user_id)
        if user is None:
            return None
        kind, policy = (("market_data", user.limits.market_data) if market_data
                        else ("read", user.limits.read))
        check = LimitCheck(f"user:{user_id}:{kind}", Limit(policy.count, policy.window))
        return check, f"{kind.replace('_', '-')} limit of user {user_id}"
