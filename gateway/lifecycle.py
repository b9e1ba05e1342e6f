"""Where this replica is in its life: serving, or draining before it stops (for ``/readyz``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """``draining`` turns true on SIGTERM, seconds before the listener closes: the readiness
    probe fails first, so the Service stops routing here while calls still get answers."""

    draining: bool = False
