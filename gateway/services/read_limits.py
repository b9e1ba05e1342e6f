"""Per-user limits on reads: order and balance reads, and market data (looser, and hotter).

They protect the gateway and the exchange from one runaway reader. They are kept in this process,
not in Redis: a shared decision would cost a Redis round trip on the cache-served market-data
path, which answers in tens of microseconds. With N replicas behind a balancer, a user can
therefore read up to N times its limit; order calls are the ones limited cluster-wide.

For the same reason they count in fixed windows (a counter per user and kind, no per-request
record): a burst straddling two windows can reach twice the limit, which a protective limit
can afford; the exact sliding windows are kept for order calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.users import UserDirectory
from gateway.core.principal import Principal
from gateway.errors import RateLimited


@dataclass(slots=True)
class _Window:
    what: str
    count: int
    length: float
    started: float = -float("inf")
    used: int = 0


class ReadLimits:
    def __init__(
        self, directory: UserDirectory, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._windows: dict[tuple[str, bool], _Window | None] = {}

    def admit(self, principal: Principal, market_data: bool) -> None:
        """Raises ``RateLimited`` when ``principal`` is over its read limit."""
        key = (principal.user_id, market_data)
        if key not in self._windows:
            self._windows[key] = self._window(*key)
        window = self._windows[key]
        if window is None:
            return
        now = self._clock()
        if now - window.started >= window.length:
            window.started, window.used = now, 0
        if window.used >= window.count:
            wait = window.started + window.length - now
            raise RateLimited(f"{window.what}: {window.count} per {window.length:g} s",
                              limit=window.count, retry_after=wait, reset_after=wait)
        window.used += 1

    def _window(self, user_id: str, market_data: bool) -> _Window | None:
        user = self._directory.get(user_id)
        if user is None:
            return None
        kind, policy = (("market-data", user.limits.market_data) if market_data
                        else ("read", user.limits.read))
        return _Window(f"{kind} limit of user {user_id}", policy.count, policy.window)
