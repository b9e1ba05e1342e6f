"""One leader per stream across replicas, the relay to the others, and their resyncs.

Three replicas' ``StreamRole``s share a fake Redis (leases with expiry on a fake clock, snapshots,
presence, and a pub/sub that can drop messages or fail) and each drive a fake stream whose state
is the list of values its leader emitted. What a user would notice: two replicas subscribing
upstream at once, a follower whose state differs from the leader's, a dead leader never
replaced, or a replica without market data while Redis is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from gateway.core.jsonrpc import JsonValue
from gateway.core.relay_order import Position, RelayFormatError, Role
from gateway.errors import StoreUnavailable
from gateway.fanout.leadership import StreamRole
from gateway.stores.market_relay import Lease, Snapshot
from gateway.stores.relay_bus import BusListener
from gateway.upstream.feed import FeedError, FeedUnavailable
from gateway.ws_settings import ClusterSettings
from tests.clock import FakeClock

TTL = 3.0
SETTINGS = ClusterSettings(lease_ttl=TTL, renew_interval=0.75)
STREAM = "depth:BCCBTC"


@dataclass
class FakeRedis:
    """The relay's Redis: what ``RedisRelayStore``'s scripts do, on a fake clock."""

    clock: FakeClock
    down: bool = False
    drop_next: int = 0
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    presence_of: dict[str, dict[str, float]] = field(default_factory=dict)
    listeners: dict[str, dict[FakeBus, BusListener]] = field(default_factory=dict)

    def channel(self, stream: str) -> str:
        return f"relay:{stream}"

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("the market-data relay (Redis) is unavailable")

    def _holder_value(self, stream: str) -> str | None:
        held = self.leases.get(stream)
        if held is None or held[1] <= self.clock():
            self.leases.pop(stream, None)
            return None
        return held[0]

    async def acquire(self, stream: str, holder: str, ttl: float) -> Lease | None:
        self._check()
        if self._holder_value(stream) is not None:
            return None
        token = self.fences[stream] = self.fences.get(stream, 0) + 1
        lease = Lease(token, f"{token}:{holder}")
        self.leases[stream] = (lease.value, self.clock() + ttl)
        return lease

    async def renew(self, stream: str, lease: Lease, ttl: float, snapshot_ttl: float) -> bool:
        self._check()
        if self._holder_value(stream) != lease.value:
            return False
        self.leases[stream] = (lease.value, self.clock() + ttl)
        return True

    async def release(self, stream: str, lease: Lease) -> None:
        self._check()
        if self._holder_value(stream) == lease.value:
            del self.leases[stream]

    async def publish(
        self, stream: str, lease: Lease, position: Position, fields: Mapping[str, str],
        messages: Sequence[str], *, reset: bool, snapshot_ttl: float,
    ) -> bool:
        self._check()
        if self._holder_value(stream) != lease.value:
            return False
        kept = {} if reset or stream not in self.snapshots else self.snapshots[stream].fields
        self.snapshots[stream] = Snapshot(position, {**kept, **fields})
        for text in messages:
            if self.drop_next:
                self.drop_next -= 1
                continue
            for listener in list(self.listeners.get(self.channel(stream), {}).values()):
                listener.relayed(text.encode())
        return True

    async def snapshot(self, stream: str) -> Snapshot | None:
        self._check()
        return self.snapshots.get(stream)

    async def presence(self, stream: str, holder: str, here: bool, ttl: float) -> int:
        self._check()
        present = self.presence_of.setdefault(stream, {})
        for gone in [name for name, until in present.items() if until <= self.clock()]:
            del present[gone]
        if here:
            present[holder] = self.clock() + ttl
        else:
            present.pop(holder, None)
        return len(present) - (holder in present)


class FakeBus:
    """One replica's pub/sub connection: subscriptions confirmed on the next loop turn."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis

    async def listen(self, channel: str, listener: BusListener) -> None:
        self._redis.listeners.setdefault(channel, {})[self] = listener
        asyncio.get_running_loop().call_soon(listener.subscribed)

    async def stop_listening(self, channel: str) -> None:
        self._redis.listeners.get(channel, {}).pop(self, None)


class FakeStream:
    """A stream whose state is the values emitted by its leader; records its upstream use."""

    def __init__(self) -> None:
        self.values: list[int] = []
        self.upstream = False
        self.whole = True
        self.needed = True
        self.holds = 0
        self.emit: Callable[[str, JsonValue], bool] = lambda kind, data: False
        self.fail_upstream = False

    def change(self, value: int) -> None:
        """An upstream update (only a replica holding the upstream gets them)."""
        assert self.upstream
        self.values.append(value)
        self.emit("v", value)

    async def use_upstream(self) -> None:
        if self.fail_upstream:
            raise FeedUnavailable("no exchange")
        if not self.upstream:
            self.upstream = True
            self.values = []  # its own subscription starts with the exchange's snapshot

    async def use_relay(self) -> None:
        self.upstream = False
        self.hold()

    def hold(self) -> None:
        self.whole = False
        self.holds += 1

    def fields(self, everything: bool) -> dict[str, str]:
        return {"values": json.dumps(self.values)}

    def load(self, fields: Mapping[str, str]) -> None:
        if "values" not in fields:
            raise RelayFormatError("no values")
        self.values = json.loads(fields["values"])
        self.whole = True

    def apply(self, kind: str, data: JsonValue) -> None:
        assert isinstance(data, int)
        self.values.append(data)


@dataclass
class Events:
    roles: dict[str, Role | None] = field(default_factory=dict)
    syncs: int = 0

    def relay_role(self, stream: str, role: Role | None) -> None:
        self.roles[stream] = role

    def relay_resynced(self, stream: str) -> None:
        self.syncs += 1


@dataclass
class Replica:
    stream: FakeStream
    role: StreamRole
    events: Events


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis(clock: FakeClock) -> FakeRedis:
    return FakeRedis(clock)


def replica(redis: FakeRedis, name: str) -> Replica:
    stream, events = FakeStream(), Events()
    role = StreamRole(STREAM, stream, redis, FakeBus(redis), name, SETTINGS, events)
    stream.emit = role.emit
    return Replica(stream, role, events)


async def settle() -> None:
    """Let the publishing and resync tasks run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def cluster(redis: FakeRedis, count: int = 3) -> list[Replica]:
    replicas = [replica(redis, f"r{index}") for index in range(count)]
    for each in replicas:
        await each.role.tick()
    await settle()
    return replicas


def leaders(replicas: list[Replica]) -> list[Replica]:
    return [each for each in replicas if each.role.role is Role.LEADER]


async def test_one_replica_leads_and_only_it_holds_the_upstream(redis: FakeRedis) -> None:
    replicas = await cluster(redis)
    assert [each.role.role for each in replicas] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert [each.stream.upstream for each in replicas] == [True, False, False]
    assert replicas[1].events.roles[STREAM] is Role.FOLLOWER


async def test_followers_see_every_change_of_the_leader_in_order(redis: FakeRedis) -> None:
    leader, *followers = await cluster(redis)
    for value in range(1, 6):
        leader.stream.change(value)
    await settle()
    for follower in followers:
        assert follower.stream.values == [1, 2, 3, 4, 5]
        assert follower.role.synced


async def test_a_late_follower_starts_from_the_snapshot(redis: FakeRedis) -> None:
    leader, _ = await cluster(redis, 2)
    for value in (1, 2, 3):
        leader.stream.change(value)
    await settle()
    late = replica(redis, "late")
    await late.role.tick()
    await settle()
    leader.stream.change(4)
    await settle()
    assert late.stream.values == [1, 2, 3, 4]
    assert late.events.syncs == 1


async def test_a_lost_message_makes_followers_resync_and_nothing_is_missed(
    redis: FakeRedis,
) -> None:
    leader, *followers = await cluster(redis)
    leader.stream.change(1)
    await settle()
    redis.drop_next = 1
    leader.stream.change(2)  # lost on the way to every follower
    await settle()
    leader.stream.change(3)  # shows the gap
    await settle()
    for follower in followers:
        assert follower.stream.values == [1, 2, 3]
        assert follower.events.syncs == 2  # joining, then the gap
        assert follower.stream.holds >= 2  # held still until the snapshot was loaded


async def test_a_dead_leader_is_replaced_once_its_lease_lapses(
    redis: FakeRedis, clock: FakeClock,
) -> None:
    dead, *survivors = await cluster(redis)
    dead.stream.change(1)
    await settle()
    # The leader is killed: it never ticks again and never releases its lease.
    clock.advance(TTL - 0.1)
    for each in survivors:
        await each.role.tick()
    assert leaders(survivors) == []
    clock.advance(0.2)
    for each in survivors:
        await each.role.tick()
    await settle()
    assert len(leaders(survivors)) == 1
    new_leader = leaders(survivors)[0]
    other = next(each for each in survivors if each is not new_leader)
    assert new_leader.stream.upstream
    assert not other.stream.upstream
    new_leader.stream.change(10)
    await settle()
    assert other.stream.values == [10]  # the new leader's book, from its own snapshot


async def test_a_leader_whose_lease_was_taken_cannot_publish_and_steps_down(
    redis: FakeRedis, clock: FakeClock,
) -> None:
    old, follower = await cluster(redis, 2)
    clock.advance(TTL + 0.1)  # the old leader was paused past its lease
    await follower.role.tick()
    await settle()
    assert follower.role.role is Role.LEADER
    follower.stream.change(7)
    await settle()
    old.stream.change(99)  # still thinks it leads: fenced off
    await settle()
    assert redis.snapshots[STREAM].fields["values"] == "[7]"
    assert old.role.role is Role.FOLLOWER
    assert not old.stream.upstream
    assert old.stream.values == [7]


async def test_while_redis_is_down_every_replica_holds_its_own_upstream_then_one_again(
    redis: FakeRedis, clock: FakeClock,
) -> None:
    replicas = await cluster(redis)
    redis.down = True
    for each in replicas:
        await each.role.tick()
    assert [each.role.role for each in replicas] == [Role.STANDALONE] * 3
    assert all(each.stream.upstream for each in replicas)
    assert all(each.events.roles[STREAM] is Role.STANDALONE for each in replicas)
    redis.down = False
    clock.advance(0.75)
    for each in replicas:
        await each.role.tick()
    await settle()
    assert [each.stream.upstream for each in replicas] == [True, False, False]
    replicas[0].stream.change(5)
    await settle()
    assert [each.stream.values for each in replicas[1:]] == [[5], [5]]


async def test_a_leader_back_from_an_outage_keeps_counting_so_no_change_is_dropped(
    redis: FakeRedis,
) -> None:
    leader, follower = await cluster(redis, 2)
    leader.stream.change(1)
    await settle()
    redis.down = True
    await leader.role.tick()
    leader.stream.change(2)  # standalone: not published
    redis.down = False
    await leader.role.tick()  # its lease still held: it leads again, in the same epoch
    await settle()
    leader.stream.change(3)
    await settle()
    assert leader.role.role is Role.LEADER
    assert follower.stream.values == [1, 2, 3]


async def test_a_leader_keeps_the_stream_while_another_replica_has_clients(
    redis: FakeRedis, clock: FakeClock,
) -> None:
    leader, follower = await cluster(redis, 2)
    leader.stream.needed = False
    await leader.role.tick()
    assert leader.role.elsewhere
    follower.stream.needed = False
    await follower.role.tick()
    await leader.role.tick()
    assert not leader.role.elsewhere


async def test_a_follower_that_closes_lets_its_presence_go_and_a_leader_its_lease(
    redis: FakeRedis,
) -> None:
    leader, follower = await cluster(redis, 2)
    await follower.role.close()
    await leader.role.tick()
    assert not leader.role.elsewhere
    await leader.role.close()
    newcomer = replica(redis, "new")
    await newcomer.role.tick()
    assert newcomer.role.role is Role.LEADER  # at once: no lease left to lapse


async def test_a_first_leader_whose_upstream_fails_gives_the_lease_up(redis: FakeRedis) -> None:
    first = replica(redis, "r0")
    first.stream.fail_upstream = True
    with pytest.raises(FeedError):
        await first.role.start()
    second = replica(redis, "r1")
    await second.role.tick()
    assert second.role.role is Role.LEADER


class SwallowingStream(FakeStream):
    """From its second call on, its upstream call turns a cancellation into an error, as a
    timeout racing the cancellation can."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.waiting = asyncio.Event()

    async def use_upstream(self) -> None:
        self.calls += 1
        if self.calls == 1:
            await super().use_upstream()
            return
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise FeedUnavailable("interrupted") from None


async def test_closing_stops_the_role_even_when_a_tick_swallows_its_cancellation(
    redis: FakeRedis,
) -> None:
    stream = SwallowingStream()
    role = StreamRole(STREAM, stream, redis, FakeBus(redis), "r0",
                      ClusterSettings(lease_ttl=TTL, renew_interval=0.001), Events())
    await role.start()
    await asyncio.wait_for(stream.waiting.wait(), 1)  # the loop's tick, stuck upstream
    await asyncio.wait_for(role.close(), 1)
    calls = stream.calls
    await asyncio.sleep(0.01)  # ten tick periods: a loop still running would call again
    assert stream.calls == calls
    assert role.role is None
