"""The deals channel: ``deals.query`` and the polled ``deals.update`` pushes.

Per watched market the channel remembers the newest deal id it has seen and the latest 100 deals
(newest first). A poll pushes only deals newer than that id, at most 100; a market's first poll
starts from id 0, so it broadcasts up to 100 recent deals. A new subscriber first gets the
cached deals, if there are any.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from gateway.core.jsonrpc import JsonValue, encode_notification
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.engine.model import MarketDeal
from simulator.ws.session import Session
from simulator.ws.watchlist import Entry, Watchlist

PUSH_LIMIT = 100
MAX_QUERY_LIMIT = 10_000


@dataclass(slots=True, eq=False)
class _DealsEntry(Entry):
    recent: list[JsonValue] = field(default_factory=list)
    last_id: int = 0


def deal_wire(deal: MarketDeal) -> JsonValue:
    return cast(JsonValue, deal.to_wire())


def query_deals(exchange: Exchange, market: str, limit: int, last_id: int) -> list[JsonValue]:
    """``market.deals``: deals with id > ``last_id``, newest first, at most ``limit``."""
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    state = exchange.market(market)
    if last_id < 0:
        # The engine reads last_id as unsigned: a negative one is larger than any deal id.
        return []
    return [deal_wire(deal) for deal in state.deals_since(last_id, limit)]


def encode_deals(market: str, deals: list[JsonValue]) -> bytes:
    return encode_notification("deals.update", [market, deals]).encode()


class DealsChannel:
    def __init__(self, exchange: Exchange) -> None:
        self._watchlist = Watchlist(exchange, _DealsEntry)

    def subscribe(self, session: Session, markets: Iterable[str]) -> None:
        for market in markets:
            self._watchlist.add(session, market)

    def unsubscribe(self, session: Session) -> None:
        self._watchlist.remove_all(session)

    def initial_pushes(self, session: Session) -> list[bytes]:
        return [encode_deals(market, entry.recent)
                for market, entry in self._watchlist.watched_by(session) if entry.recent]

    def counts(self) -> dict[str, int]:
        return self._watchlist.counts()

    def poll(self) -> None:
        for market, entry, state in self._watchlist.live():
            deals = state.deals_since(entry.last_id, PUSH_LIMIT)
            if not deals:
                continue
            entry.last_id = deals[0].id
            wire = [deal_wire(deal) for deal in deals]
            entry.recent = (wire + entry.recent)[:PUSH_LIMIT]
            if entry.sessions:
                entry.broadcast(encode_deals(market, wire))
