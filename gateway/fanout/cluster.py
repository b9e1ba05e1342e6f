"""The fan-out's place in the cluster: one replica's relay bus, its roles, and the ticker's demand.

Built by the composition root when ``redis.url`` is set and ``ws.cluster.enabled``; without it
the hub holds every upstream subscription itself, as a single replica does. Owns:

- the replica's identity in the cluster (``holder``: host name, process id and a random part, so
  a restarted process is a new holder and never mistakes an old lease for its own);
- one ``RelayBus`` (one pub/sub connection) shared by every stream's role;
- a ``StreamRole`` per stream, made on demand (``role``);
- the ticker's demand: every replica records the markets its clients follow on price and deals
  (on each change and each tick), and the ticker's leader subscribes the exchange to the union,
  read again on each tick and whenever a replica's lists change (a nudge on the bus).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Coroutine

from gateway.core.relay_order import Role
from gateway.errors import StoreUnavailable
from gateway.fanout.leadership import RelayedStream, RoleEvents, StreamRole
from gateway.fanout.ticker import Ticker
from gateway.stores.market_relay import Demand, RedisRelayStore
from gateway.stores.relay_bus import RelayBus
from gateway.upstream.feed import FeedError
from gateway.ws_settings import ClusterSettings

logger = logging.getLogger(__name__)
TICKER = "ticker"


def new_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class ClusterFanout:
    def __init__(
        self, store: RedisRelayStore, bus: RelayBus, settings: ClusterSettings,
        events: RoleEvents, holder: str | None = None,
    ) -> None:
        self.holder = holder or new_holder()
        self._store = store
        self._bus = bus
        self._settings = settings
        self._events = events
        self._ticker: Ticker | None = None
        self._ticker_role: StreamRole | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def role(self, name: str, stream: RelayedStream) -> StreamRole:
        return StreamRole(name, stream, self._store, self._bus, self.holder, self._settings,
                          self._events)

    async def start_ticker(self, ticker: Ticker) -> None:
        """Relay ``ticker`` (price and deals of every market) through the cluster."""
        self._bus.start()
        self._ticker = ticker
        ticker.demand_out = self._publish_demand
        role = self._ticker_role = self.role(TICKER, ticker)
        ticker.relay_out = role.emit
        role.on_tick = self._demand_tick
        await self._bus.listen(self._store.demand_channel, _Nudge(self))
        await role.start(strict=False)

    async def close(self) -> None:
        if self._ticker_role is not None:
            await self._ticker_role.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._bus.close()

    async def _publish_demand(self, demand: Demand) -> None:
        await self._store.set_demand(self.holder, demand, self._settings.lease_ttl)

    async def _demand_tick(self, role: Role | None) -> None:
        """On each of the ticker's ticks (raising ``StoreUnavailable`` to its role)."""
        ticker = self._ticker
        if ticker is None:
            return
        await self._publish_demand(ticker.own_demand)
        await self._follow_demand()  # while leading

    async def _follow_demand(self) -> None:
        ticker = self._ticker
        if ticker is None or self._ticker_role is None \
                or self._ticker_role.role is not Role.LEADER:
            return
        try:
            await ticker.set_cluster_demand(await self._store.demand())
        except FeedError as exc:  # the lists are kept and sent again
            logger.info("ticker: the cluster's market lists were not sent: %s", exc)

    def nudged(self) -> None:
        self._spawn(self._nudged())

    async def _nudged(self) -> None:
        try:
            await self._follow_demand()
        except StoreUnavailable as exc:
            logger.info("ticker: the cluster's lists could not be read: %s", exc.message)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Nudge:
    """The demand channel's listener: a replica's lists changed."""

    def __init__(self, cluster: ClusterFanout) -> None:
        self._cluster = cluster

    def relayed(self, payload: bytes) -> None:
        self._cluster.nudged()

    def subscribed(self) -> None:
        self._cluster.nudged()

    def bus_lost(self) -> None:
        pass
