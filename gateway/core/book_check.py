"""Whether a live book can still be trusted: when it was last confirmed, and when to resync it.

A live book is *confirmed* when an update is pushed for it or when the exchange's own
``depth.query`` answers with the book the gateway holds. A book that stops being confirmed (the
exchange stalled its pushes but still answers pings) must not be served as fresh for long:
``servable`` says whether it is within ``max_age``.

A query that disagrees with the book is not proof of a stale book by itself. The exchange caches
``depth.query`` answers for up to ~10 s, so an answer can show an older book; and it can show a
newer one, taken between two pushes. Both heal by themselves: a later answer or push matches. So
a mismatch counts only when a second one is seen at least ``confirm_after`` seconds (longer than
the exchange's cache) after the first, with no push or matching answer between them; a push
clears it, since a book that receives pushes is current as far as the exchange tells anyone
(and the exchange's own periodic clean snapshots heal any drift).

Pure: ``now`` is passed in by the caller, who owns the clock.
"""

from __future__ import annotations


class BookCheck:
    __slots__ = ("_confirm_after", "_confirmed_at", "_first_mismatch", "_max_age")

    def __init__(self, *, confirm_after: float, max_age: float, now: float) -> None:
        if confirm_after <= 0 or max_age <= 0:
            raise ValueError("confirm_after and max_age must be positive")
        self._confirm_after = confirm_after
        self._max_age = max_age
        self._confirmed_at = now
        self._first_mismatch: float | None = None

    def confirmed(self, now: float) -> None:
        """An update was pushed for the book, or a query matched it (or replaced it)."""
        self._confirmed_at = now
        self._first_mismatch = None

    def mismatched(self, now: float) -> bool:
        """A query disagreed with the book; True when the book must be resynced now."""
        first = self._first_mismatch
        if first is None:
            self._first_mismatch = now
            return False
        if now - first < self._confirm_after:
            return False
        self._first_mismatch = None
        return True

    def age(self, now: float) -> int:
        """Whole seconds since the book was last confirmed."""
        return max(0, int(now - self._confirmed_at))

    def servable(self, now: float) -> bool:
        """Whether the book was confirmed recently enough to be served as fresh."""
        return now - self._confirmed_at <= self._max_age
