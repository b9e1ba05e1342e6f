"""Fault injection knobs: what a test turns on to make the exchange misbehave.

Each knob is independent, settable and clearable through ``POST /_sim/faults``. The state is plain
data; the REST middleware and the WebSocket server read it on their hot paths, so reads are cheap.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    refuse_ws: bool = False
    stall_until: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_request_fails(self) -> bool:
        return self.error_rate > 0 and self.rng.random() < self.error_rate

    def pushes_stalled(self) -> bool:
        return self.stall_until > time.monotonic()

    def stall_pushes(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds if seconds > 0 else 0.0

    def clear(self) -> None:
        self.latency = 0.0
        self.error_rate = 0.0
        self.error_status = 503
        self.refuse_ws = False
        self.stall_until = 0.0

    def to_wire(self) -> dict[str, object]:
        remaining = max(0.0, self.stall_until - time.monotonic())
        return {
            "latency_ms": round(self.latency * 1000, 3),
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "refuse_ws": self.refuse_ws,
            "stall_pushes_s": round(remaining, 3),
        }
