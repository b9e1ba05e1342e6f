"""The three public channels of one server, polled together and forgotten together."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.config import WsSettings
from simulator.engine.exchange import Exchange
from simulator.ws.deals import DealsChannel
from simulator.ws.depth import DepthChannel
from simulator.ws.price import PriceChannel
from simulator.ws.session import Session


@dataclass(frozen=True, slots=True)
class Channels:
    depth: DepthChannel
    price: PriceChannel
    deals: DealsChannel

    @classmethod
    def create(cls, exchange: Exchange, settings: WsSettings) -> Channels:
        return cls(DepthChannel(exchange, settings.full_snapshot_every),
                   PriceChannel(exchange), DealsChannel(exchange))

    def poll(self, now: float) -> None:
        self.depth.poll(now)
        self.price.poll()
        self.deals.poll()

    def forget(self, session: Session) -> None:
        self.depth.unsubscribe(session)
        self.price.unsubscribe(session)
        self.deals.unsubscribe(session)

    def counts(self) -> dict[str, dict[str, int]]:
        return {"depth": self.depth.counts(), "price": self.price.counts(),
                "deals": self.deals.counts()}
