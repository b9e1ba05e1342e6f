"""The price channel: ``price.query`` and the polled ``price.update`` pushes.

Expie renders the last price two ways and so do we: the query and every poll push carry the
unstripped engine text at the market's engine money precision (``"0.14900000"``); the push that
follows a subscription carries the stripped form of the cached price (``"0.149"``). A poll pushes
only when the price changes numerically, so a trade at the same price is silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from gateway.core.decimals import render, render_raw
from gateway.core.jsonrpc import encode_notification
from simulator.engine.exchange import Exchange
from simulator.ws.session import Session
from simulator.ws.watchlist import Entry, Watchlist

ZERO = Decimal(0)


@dataclass(slots=True, eq=False)
class _PriceEntry(Entry):
    last: Decimal = ZERO


def query_price(exchange: Exchange, market: str) -> str:
    """``market.last``: unstripped at the engine's precision, ``"0"`` before the first trade."""
    state = exchange.market(market)
    if state.last_price == 0:
        return "0"
    return render_raw(state.last_price, state.spec.engine_money_precision)


def encode_price(market: str, price: str) -> bytes:
    return encode_notification("price.update", [market, price]).encode()


class PriceChannel:
    def __init__(self, exchange: Exchange) -> None:
        self._watchlist = Watchlist(exchange, _PriceEntry)

    def subscribe(self, session: Session, markets: Iterable[str]) -> None:
        for market in markets:
            self._watchlist.add(session, market)

    def unsubscribe(self, session: Session) -> None:
        self._watchlist.remove_all(session)

    def initial_pushes(self, session: Session) -> list[bytes]:
        return [encode_price(market, render(entry.last))
                for market, entry in self._watchlist.watched_by(session) if entry.last != 0]

    def counts(self) -> dict[str, int]:
        return self._watchlist.counts()

    def poll(self) -> None:
        for market, entry, state in self._watchlist.live():
            if state.last_price == entry.last:
                continue
            entry.last = state.last_price
            if entry.sessions:
                raw = render_raw(entry.last, state.spec.engine_money_precision)
                entry.broadcast(encode_price(market, raw))
