"""A circuit breaker for one upstream: a pure state machine (no I/O; the clock is injected).

CLOSED counts consecutive failures; ``failures_to_open`` of them open the circuit. OPEN refuses
calls (``CircuitOpen``, with the seconds until the next probe) for ``cooldown`` seconds. After
that, the first caller becomes the single probe (HALF_OPEN) and every other caller is refused
until the probe reports: a success closes the circuit, a failure opens it for another cooldown.

What counts as a failure is the caller's business (``gateway.upstream.rest``: transport errors,
timeouts, 502/503/504); this module only counts. Reports are not tied to calls: a late report
from a call admitted before the circuit opened is ignored while OPEN and, like the probe's own,
decides while HALF_OPEN. A probe that ends without a verdict (cancelled) reports
``record_abandoned`` so the next caller probes instead of the circuit staying half-open forever.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from gateway.errors import CircuitOpen


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown: float, clock: Callable[[], float]) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        self._threshold = failures_to_open
        self._cooldown = cooldown
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._probe_at = 0.0

    @property
    def state(self) -> CircuitState:
        return self._state

    def before_call(self) -> None:
        """Admit a call or raise ``CircuitOpen``; the first call after the cooldown is the probe."""
        if self._state is CircuitState.CLOSED:
            return
        if self._state is CircuitState.OPEN and self._clock() >= self._probe_at:
            self._state = CircuitState.HALF_OPEN
            return
        raise CircuitOpen(self.retry_after())

    def retry_after(self) -> float:
        """Seconds until a call may be admitted: 0 when closed or while the probe is out."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._probe_at - self._clock())

    def record_success(self) -> None:
        if self._state is CircuitState.OPEN:
            return
        self._state = CircuitState.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        if self._state is CircuitState.OPEN:
            return
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self._threshold:
            self._open()

    def record_abandoned(self) -> None:
        """An admitted call ended without a verdict: a pending probe's turn passes on."""
        if self._state is CircuitState.HALF_OPEN:
            self._state = CircuitState.OPEN
            self._probe_at = self._clock()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._failures = 0
        self._probe_at = self._clock() + self._cooldown
