"""Exponential backoff after failed sign-ins: how long a client id or an address must wait.

The first ``free_failures`` failures cost nothing (a mistyped secret); each failure after that
doubles the wait, from ``base_delay`` up to ``max_delay``; a run of failures is forgotten
``forget_after`` seconds after the last one. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    free_failures: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0
    forget_after: float = 900.0

    def __post_init__(self) -> None:
        if self.free_failures < 0 or not 0 < self.base_delay <= self.max_delay:
            raise ValueError("free_failures >= 0 and 0 < base_delay <= max_delay")
        if self.forget_after < self.max_delay:
            raise ValueError("forget_after must be at least max_delay")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        beyond = failures - self.free_failures
        if beyond <= 0:
            return 0.0
        # 2 ** 64 is already far past any max_delay; the cap keeps the power small.
        return min(self.max_delay, self.base_delay * 2.0 ** min(beyond - 1, 64))
