"""In-process single flight: concurrent callers for one key share one in-flight computation.

The computation runs in its own task, so a caller that goes away (its client disconnected) does
not cancel the work the others are waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of ``work()`` for ``key``; a caller arriving while it runs awaits the same."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(work(), name=f"single-flight {key}")
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: str, flight: asyncio.Task[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            # Marks the outcome as seen even if every waiter went away before it landed.
            flight.exception()
