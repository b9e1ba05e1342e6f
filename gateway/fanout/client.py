"""One downstream client as the hub sees it: who it is, what it follows, and its subscriber.

The subscriber (bounded queue + writer) sends; this record holds the subscriptions Expie's
replace semantics apply to: one depth view, a price market list, a deals market list.
"""

from __future__ import annotations

from collections.abc import Hashable

from gateway.core.principal import Principal
from gateway.fanout.subscriber import (
    Frame,
    Kind,
    OutboundSocket,
    Resync,
    Subscriber,
    SubscriberEvents,
)

DepthKey = tuple[str, int, str]
"""A depth view: ``(market, limit, interval text)``; "0.1" and "0.10" are two views, as in Expie."""


class Client:
    def __init__(
        self, socket: OutboundSocket, queue_limit: int, events: SubscriberEvents | None,
        resync: Resync,
    ) -> None:
        self.subscriber = Subscriber(socket, queue_limit=queue_limit, events=events,
                                     resync=resync)
        self.principal: Principal | None = None
        self.depth: DepthKey | None = None
        self.price: frozenset[str] = frozenset()
        self.deals: frozenset[str] = frozenset()

    @property
    def markets(self) -> frozenset[str]:
        """Every market this client follows, on any channel."""
        depth = frozenset({self.depth[0]}) if self.depth else frozenset()
        return depth | self.price | self.deals

    def reply(self, text: str) -> None:
        self.subscriber.offer(Frame(text.encode(), Kind.REPLY))

    def push(self, frame: Frame) -> None:
        self.subscriber.offer(frame)

    def restart(self, frame: Frame) -> None:
        """Offer a clean snapshot that starts ``frame.view`` afresh (after a reset of the view).

        It replaces whatever of the view is still queued, and it also reaches a client whose
        view was conflated and found no snapshot to resync with (the view was reset then):
        without it that view would stay silent for good.
        """
        self.subscriber.forget(frame.view)
        self.subscriber.offer(frame)

    def forget(self, view: Hashable) -> None:
        self.subscriber.forget(view)

    async def close(self, code: int, reason: str) -> None:
        await self.subscriber.close(code, reason)
