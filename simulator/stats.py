"""Request counters for ``GET /_sim/stats``: how many calls each REST route template received."""

from __future__ import annotations

from collections import Counter


class RestCounters:
    def __init__(self) -> None:
        self._by_route: Counter[str] = Counter()

    def count(self, route: str) -> None:
        """One more call of ``route``, named ``"<METHOD> <route template>"``."""
        self._by_route[route] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self._by_route)
