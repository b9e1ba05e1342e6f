"""Which replica holds a stream's upstream subscription, and how the others follow it.

A ``StreamRole`` runs beside one relayed stream (a market's depth, or the ticker) and, every
``ws.cluster.renew_interval``, decides its replica's part:

- **leader**: it holds the lease (``gateway.stores.market_relay``), the stream holds the upstream
  subscription, and every change the stream ``emit``s is published, stamped (epoch = the lease's
  fencing token, seq), with the snapshot of the stream's state at that seq in the same atomic
  step. Publishing is one batch at a time: what changes while a batch is on its way goes in the
  next one, so a slow Redis costs fewer, larger round trips, never reordering.
- **follower**: another replica leads; the stream has no upstream subscription and is fed from
  the relay. It resyncs from the snapshot when it subscribes (again), and on any gap or new epoch
  (``gateway.core.relay_order``). It tries to take the lease on every tick, so a leader killed
  with ``kill -9`` is replaced within ``lease_ttl`` + ``renew_interval``.
- **standalone**: Redis failed. Market data is read-only, so it fails open: the stream holds its
  own upstream subscription, as a single replica does, until Redis answers again; then it leads
  or follows. Counted (``expie_gateway_fanout_relay_streams{role="standalone"}``) and logged
  on each change.

Every tick also records whether this replica has a client of the stream (presence, with the
lease's TTL), so a leader without clients of its own keeps the subscription while another replica
still has one (``elsewhere``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Protocol

from gateway.core.jsonrpc import JsonValue
from gateway.core.relay_order import (
    Position,
    RelayCursor,
    RelayFormatError,
    RelayMessage,
    Role,
    decode_message,
)
from gateway.errors import StoreUnavailable
from gateway.stores.market_relay import Lease, RelayStore
from gateway.stores.relay_bus import BusListener
from gateway.upstream.feed import FeedError
from gateway.ws_settings import ClusterSettings

logger = logging.getLogger(__name__)
# A snapshot outlives its leader's last renewal this many leases: a stream's state is not
# something to keep in Redis once nobody leads it.
_SNAPSHOT_LEASES = 4
# Resyncs in a row overtaken by the stream before the next tick tries again.
_RESYNC_TRIES = 3
# How long closing waits for the role's tasks (the last batch published among them).
_CLOSE_WAIT = 3.0


class RelayedStream(Protocol):
    """What a stream gives its role: its upstream, its state as fields, and what relays to it."""

    @property
    def needed(self) -> bool:
        """Whether a client of this replica follows the stream."""

    async def use_upstream(self) -> None:
        """Hold the upstream subscription (a no-op if held); raises ``FeedError``."""

    async def use_relay(self) -> None:
        """Give the upstream subscription up: the state waits for the relay (``hold``)."""

    def hold(self) -> None:
        """The relay is not whole: show nothing until ``load`` (clients then get a snapshot)."""

    def fields(self, everything: bool) -> dict[str, str]:
        """The state's fields changed since the last call (all of them when ``everything``)."""

    def load(self, fields: Mapping[str, str]) -> None:
        """Take the leader's state from a snapshot; raises ``RelayFormatError``."""

    def apply(self, kind: str, data: JsonValue) -> None:
        """One relayed change, exactly as the leader made it."""


class Bus(Protocol):
    async def listen(self, channel: str, listener: BusListener) -> None: ...

    async def stop_listening(self, channel: str) -> None: ...


class RoleEvents(Protocol):
    def relay_role(self, stream: str, role: Role | None) -> None: ...

    def relay_resynced(self, stream: str) -> None: ...


class StreamRole:
    def __init__(
        self, name: str, stream: RelayedStream, store: RelayStore, bus: Bus, holder: str,
        settings: ClusterSettings, events: RoleEvents,
    ) -> None:
        self.name = name
        self._stream = stream
        self._store = store
        self._bus = bus
        self._holder = holder
        self._settings = settings
        self._events = events
        self._role: Role | None = None
        self._lease: Lease | None = None
        self._seq = 0
        # The epoch ``_seq`` counts in: a lease kept through a Redis outage goes on counting.
        self._seq_epoch: int | None = None
        self._pending: list[str] = []
        self._snapshot_due = False
        self._cursor = RelayCursor()
        self._listening = False
        self._elsewhere = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._resyncing: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._deciding = asyncio.Lock()
        self._closing = False
        # Run on each tick once the role is decided (the ticker's demand); may raise
        # ``StoreUnavailable`` like the tick itself.
        self.on_tick: Callable[[Role | None], Awaitable[None]] | None = None

    @property
    def role(self) -> Role | None:
        return self._role

    @property
    def elsewhere(self) -> bool:
        """Whether another replica had a client of the stream at the last tick."""
        return self._elsewhere

    @property
    def synced(self) -> bool:
        """Whether the stream's state is whole: led, standalone, or followed without a gap."""
        return self._role is not Role.FOLLOWER or self._cursor.synced

    async def start(self, *, strict: bool = True) -> None:
        """The first decision, awaited (when ``strict``, a leader's upstream error reaches the
        caller, the lease given up), then a tick every ``renew_interval``."""
        await self.tick(first=strict)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_every(),
                                                              name=f"role-{self.name}")

    async def close(self) -> None:
        """Stop; give the lease and the presence up (best effort: they lapse anyway)."""
        # Checked by the tick loop too: a cancellation a library turned into an error it raised
        # (a timeout racing the cancel) must not keep the loop, and the process, alive.
        self._closing = True
        tasks = [task for task in (self._ticker, self._resyncing, *self._tasks) if task]
        for task in tasks:
            task.cancel()
        if self._flusher is not None:  # the last changes still reach the followers
            tasks.append(self._flusher)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_WAIT)
            if pending:
                logger.warning("relay of %s: %d task(s) did not stop within %g s", self.name,
                               len(pending), _CLOSE_WAIT)
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                await self._store.release(self.name, lease)
            await self._store.presence(self.name, self._holder, False, self._settings.lease_ttl)
        except StoreUnavailable:
            logger.info("relay of %s: the lease and presence lapse on their own", self.name)
        await self._stop_listening()
        self._set_role(None)

    def emit(self, kind: str, data: JsonValue) -> bool:
        """A change of the stream's state: published while this replica leads (then True)."""
        if self._role is not Role.LEADER or self._lease is None:
            return False
        self._seq += 1
        self._pending.append(RelayMessage(self._lease.token, self._seq, kind, data).encode())
        self._flush_soon()
        return True

    async def tick(self, *, first: bool = False) -> None:
        """Renew or take the lease, or follow; record presence; standalone while Redis fails."""
        if self._closing:
            return
        async with self._deciding:
            await self._decide(first)
        if self._role is Role.FOLLOWER and not self._cursor.synced and self._listening:
            self._resync_soon()

    async def _decide(self, first: bool) -> None:
        ttl = self._settings.lease_ttl
        try:
            lease = self._lease
            if lease is not None and not await self._store.renew(
                    self.name, lease, ttl, ttl * _SNAPSHOT_LEASES):
                logger.warning("relay of %s: the lease lapsed; another replica leads", self.name)
                self._lease = lease = None
                self._set_role(None)
            if lease is None:
                lease = await self._store.acquire(self.name, self._holder, ttl)
            if lease is not None:
                await self._lead(lease)
            else:
                await self._follow()
            others = await self._store.presence(self.name, self._holder, self._stream.needed,
                                                ttl)
            self._elsewhere = others > 0
            if self.on_tick is not None:
                await self.on_tick(self._role)
        except StoreUnavailable as exc:
            await self._standalone(exc)
        except FeedError:
            if first:
                await self._give_up_lease()
                raise
            logger.warning("relay of %s: the upstream subscription failed; retrying",
                           self.name, exc_info=True)

    # --- bus listener -------------------------------------------------------------------

    def relayed(self, payload: bytes) -> None:
        if self._role is not Role.FOLLOWER:
            return
        try:
            message = decode_message(payload)
        except RelayFormatError as exc:
            logger.warning("relay of %s: unreadable message (%s); resyncing", self.name, exc)
            self._cursor.lose()
            self._stream.hold()
            self._resync_soon()
            return
        step = self._cursor.offer(message)
        for applied in step.apply:
            self._stream.apply(applied.kind, applied.data)
        if step.resync:
            self._stream.hold()
        if not self._cursor.synced:
            # Buffered: a snapshot now, not at the next tick (a new leader's first messages).
            self._resync_soon()

    def subscribed(self) -> None:
        if self._role is Role.FOLLOWER:
            self._cursor.lose()
            self._stream.hold()
            self._resync_soon()

    def bus_lost(self) -> None:
        if self._role is Role.FOLLOWER:
            self._cursor.lose()
            self._stream.hold()

    # --- transitions --------------------------------------------------------------------

    async def _lead(self, lease: Lease) -> None:
        if self._role is not Role.LEADER:
            await self._stop_listening()
            if self._seq_epoch != lease.token:
                self._seq, self._seq_epoch = 0, lease.token
            else:
                # Back from standalone in the same epoch: what changed meanwhile was never
                # published, so the followers must see a gap and take the new snapshot.
                self._seq += 1
            self._lease = lease
            self._pending.clear()
            # Written whole: followers of another epoch, or that missed what a Redis outage
            # kept from them, resync from it.
            self._snapshot_due = True
            self._set_role(Role.LEADER)
            logger.info("relay of %s: leading (epoch %d)", self.name, lease.token)
        await self._stream.use_upstream()  # again on each tick until the upstream takes it
        if self._snapshot_due:
            self._flush_soon()

    async def _follow(self) -> None:
        if self._role is not Role.FOLLOWER:
            was = self._role
            self._set_role(Role.FOLLOWER)
            self._cursor.lose()
            await self._stream.use_relay()
            if was is not None:
                logger.info("relay of %s: following the leader's relay", self.name)
        if not self._listening:
            await self._bus.listen(self._store.channel(self.name), self)
            self._listening = True

    async def _standalone(self, exc: StoreUnavailable) -> None:
        if self._role is not Role.STANDALONE:
            logger.warning("relay of %s: Redis is unavailable (%s); holding an upstream "
                           "subscription of this replica's own until it answers", self.name,
                           exc.message)
            self._set_role(Role.STANDALONE)
            self._pending.clear()
            await self._stop_listening()
        try:
            await self._stream.use_upstream()
        except FeedError:
            logger.warning("relay of %s: the upstream subscription failed; retrying", self.name,
                           exc_info=True)

    async def _give_up_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                await self._store.release(self.name, lease)
            except StoreUnavailable:
                logger.info("relay of %s: the lease lapses on its own", self.name)
        self._set_role(None)

    async def _stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            await self._bus.stop_listening(self._store.channel(self.name))

    def _set_role(self, role: Role | None) -> None:
        self._role = role
        self._events.relay_role(self.name, role)

    # --- publishing and resyncing -------------------------------------------------------

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while (self._pending or self._snapshot_due) and self._lease is not None \
                and self._role is Role.LEADER:
            lease, batch, self._pending = self._lease, self._pending, []
            reset, self._snapshot_due = self._snapshot_due, False
            # The state now is the state at the last message emitted, all of them in ``batch``.
            fields = self._stream.fields(reset)
            position = Position(lease.token, self._seq)
            try:
                held = await self._store.publish(
                    self.name, lease, position, fields, batch, reset=reset,
                    snapshot_ttl=self._settings.lease_ttl * _SNAPSHOT_LEASES)
            except StoreUnavailable as exc:
                # Lost: followers see the gap and resync from the next snapshot, written whole.
                logger.info("relay of %s: a batch was not published (%s)", self.name,
                            exc.message)
                self._snapshot_due = True
                return
            if not held:
                logger.warning("relay of %s: the lease was taken over; following", self.name)
                self._lease = None
                self._set_role(None)
                self._spawn(self.tick())
                return

    def _resync_soon(self) -> None:
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        for _ in range(_RESYNC_TRIES):
            try:
                snapshot = await self._store.snapshot(self.name)
            except StoreUnavailable:
                return  # the next tick goes standalone
            except RelayFormatError as exc:
                logger.warning("relay of %s: unreadable snapshot (%s)", self.name, exc)
                return
            if snapshot is None or self._role is not Role.FOLLOWER:
                return  # no leader wrote one yet: the next tick tries again
            try:
                self._stream.hold()
                self._stream.load(snapshot.fields)
            except RelayFormatError as exc:
                logger.warning("relay of %s: unreadable snapshot (%s)", self.name, exc)
                return
            self._events.relay_resynced(self.name)
            step = self._cursor.restart(snapshot.position)
            for applied in step.apply:
                self._stream.apply(applied.kind, applied.data)
            if not step.resync:
                return
            self._stream.hold()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick_every(self) -> None:
        while True:
            await asyncio.sleep(self._settings.renew_interval)
            if self._closing:
                return
            try:
                await self.tick()
            except Exception:
                logger.exception("relay of %s: a tick failed", self.name)
