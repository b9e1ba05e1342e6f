"""Pacing of calls to the exchange per upstream account, in this process.

Owns ``AccountPacer``: one ``aiolimiter.AsyncLimiter`` per upstream account (``rate`` calls a
second, bursts of up to ``burst``). A call beyond the pace waits its turn, but only while its
expected wait stays within ``max_wait``: a call that would wait longer is refused at once with
``RateLimited(code="account_busy")`` and never queued, so a backlog cannot grow without bound.

The cluster-wide limits are the rate-limit store's job (``gateway.stores.rate_limits``); this
smooths what one process sends so the account's own quota at the exchange is not burnt by a
burst. It does not know users or orders, and it does no I/O.
"""

from __future__ import annotations

import asyncio
import math

from aiolimiter import AsyncLimiter

from gateway.errors import RateLimited

# The queue-length check already bounds the wait; the timeout is only a backstop against a
# stalled loop, with slack so a caller admitted to the queue is not refused for timer jitter.
_SCHEDULING_SLACK = 0.05
# Rounding slack for max_wait * rate: 0.1 s at 50/s is 5 queued calls, not 4.999...
_EPSILON = 1e-9


class _Gate:
    """One account's pace: the limiter, and a lock so queued calls go out in arrival order.

    aiolimiter lets a newcomer that finds capacity take it ahead of a waiter it has just woken;
    behind the lock the limiter has at most one waiter, so no call is overtaken.
    """

    __slots__ = ("limiter", "lock", "queued")

    def __init__(self, rate: float, burst: int) -> None:
        # aiolimiter's bucket holds `burst` and drains at `burst` per `burst / rate` seconds
        self.limiter = AsyncLimiter(burst, burst / rate)
        self.lock = asyncio.Lock()
        self.queued = 0  # calls waiting their turn, the one at the limiter included


class AccountPacer:
    """Paces calls per upstream account; ``rate <= 0`` disables pacing altogether."""

    def __init__(self, rate: float, burst: int, max_wait: float) -> None:
        if rate > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        if rate > 0 and not 0 <= max_wait < math.inf:
            raise ValueError(f"max_wait must be a finite number of seconds >= 0: {max_wait!r}")
        self._rate = rate
        self._burst = burst
        self._max_wait = max_wait
        # The k-th call in the queue waits at most k / rate: so many fit within max_wait.
        self._max_queue = math.floor(max_wait * rate + _EPSILON) if rate > 0 else 0
        self._gates: dict[str, _Gate] = {}  # created in the running loop, on first use

    async def pace(self, account: str) -> None:
        """Return when a call for ``account`` may go out. Raises ``RateLimited`` (account_busy)
        at once when it would have to wait longer than ``max_wait``."""
        if self._rate <= 0:
            return
        gate = self._gate(account)
        if gate.queued == 0 and gate.limiter.has_capacity():
            await gate.limiter.acquire()  # within the burst: returns without suspending
            return
        if gate.queued >= self._max_queue:
            raise self._busy(account, (gate.queued + 1) / self._rate)
        gate.queued += 1
        try:
            async with asyncio.timeout(self._max_wait + _SCHEDULING_SLACK), gate.lock:
                await gate.limiter.acquire()
        except TimeoutError as exc:
            raise self._busy(account, self._max_wait) from exc
        finally:
            gate.queued -= 1

    def _gate(self, account: str) -> _Gate:
        gate = self._gates.get(account)
        if gate is None:
            gate = self._gates[account] = _Gate(self._rate, self._burst)
        return gate

    def _busy(self, account: str, wait: float) -> RateLimited:
        return RateLimited(
            f"upstream account {account} is busy: calls to the exchange are paced at "
            f"{self._rate:g} per second and the queue is full",
            limit=self._burst, retry_after=wait, reset_after=wait, code="account_busy")
