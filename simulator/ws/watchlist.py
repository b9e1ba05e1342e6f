"""What price and deals subscriptions share: a per-connection list of markets, replaced as a whole.

Each watched market has one entry (its sessions plus whatever the channel caches about it). An
entry outlives its last subscriber while its market exists, so its cache stays current for the
next one; an entry for a market the engine does not know is forgotten once nobody watches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from simulator.engine.errors import EngineError
from simulator.engine.exchange import Exchange
from simulator.engine.market import MarketState
from simulator.ws.session import Session


@dataclass(slots=True, eq=False)
class Entry:
    sessions: dict[Session, None] = field(default_factory=dict)

    def broadcast(self, frame: bytes) -> None:
        for session in self.sessions:
            session.send(frame)


E = TypeVar("E", bound=Entry)


class Watchlist(Generic[E]):
    def __init__(self, exchange: Exchange, new_entry: Callable[[], E]) -> None:
        self._exchange = exchange
        self._new_entry = new_entry
        self._entries: dict[str, E] = {}
        self._by_session: dict[Session, dict[str, None]] = {}

    def add(self, session: Session, market: str) -> None:
        entry = self._entries.get(market)
        if entry is None:
            entry = self._entries[market] = self._new_entry()
        entry.sessions[session] = None
        self._by_session.setdefault(session, {})[market] = None

    def remove_all(self, session: Session) -> None:
        for market in self._by_session.pop(session, {}):
            self._entries[market].sessions.pop(session, None)

    def watched_by(self, session: Session) -> Iterator[tuple[str, E]]:
        for market in self._by_session.get(session, {}):
            yield market, self._entries[market]

    def counts(self) -> dict[str, int]:
        return {market: len(entry.sessions)
                for market, entry in self._entries.items() if entry.sessions}

    def live(self) -> Iterator[tuple[str, E, MarketState]]:
        """Entries whose market the engine knows, with its state; drops unwatched unknown ones."""
        for market, entry in list(self._entries.items()):
            try:
                state = self._exchange.market(market)
            except EngineError:
                if not entry.sessions:
                    del self._entries[market]
                continue
            yield market, entry, state
