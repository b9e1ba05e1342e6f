"""What the replicas share to hold one upstream subscription per stream: leases, snapshots, demand.

A stream is one market's depth (``depth:{market}``) or the price and deals of every market
(``ticker``). Per stream, in Redis:

- ``{prefix}relay:lease:{stream}``     string ``{token}:{holder}``, ``PX`` the lease TTL
- ``{prefix}relay:fence:{stream}``     counter: each new lease takes the next token
- ``{prefix}relay:snap:{stream}``      hash: ``epoch``, ``seq`` and the leader's state fields
- ``{prefix}relay:presence:{stream}``  sorted set: replicas with a client, scored by expiry (ms)
- ``{prefix}relay:demand``             hash: replica -> the markets it follows on price / deals
- ``{prefix}relay:demand-alive``       sorted set: the replicas whose lists count, scored by expiry
- channel ``{prefix}relay:{stream}``   the leader's messages; ``{prefix}relay:demand`` a nudge

The token is the fencing token: ``publish`` writes the snapshot and publishes in one script that
first checks the lease is still the caller's, so a leader that lost its lease (paused, cut off)
can never overwrite its successor's stream. Expiries use Redis's own clock (``TIME``), so the
replicas' clocks never have to agree. Every method raises ``StoreUnavailable`` when Redis fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

import redis.asyncio

from gateway.core.relay_order import Position, RelayFormatError
from gateway.stores.redis_client import milliseconds, translating_errors

_CODE = "relay_unavailable"

# KEYS: lease, fence. ARGV: holder, ttl ms. A token when the lease was free, else false.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""
# KEYS: lease, snapshot. ARGV: lease value, ttl ms, snapshot ttl ms. A quiet stream publishes
# nothing: renewing keeps its snapshot for the followers that join meanwhile.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""
# KEYS: lease. ARGV: lease value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, snapshot, channel. ARGV: lease value, epoch, seq, reset (0/1), snapshot ttl ms,
# field count n, n field/value pairs, then the messages.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'seq', ARGV[3])
local fields = tonumber(ARGV[6])
for i = 0, fields - 1 do
  redis.call('HSET', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
for i = 7 + 2 * fields, #ARGV do redis.call('PUBLISH', KEYS[3], ARGV[i]) end
return 1
"""
# KEYS: presence. ARGV: holder, here (0/1), ttl ms. The other replicas present.
_PRESENCE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then others = others - 1 end
return others
"""
# KEYS: demand hash, the demand's live replicas, nudge channel. ARGV: holder, lists JSON, ttl ms.
_SET_DEMAND = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local changed = redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if changed then redis.call('PUBLISH', KEYS[3], ARGV[1]) end
return 1
"""
# KEYS: demand hash, the demand's live replicas. Every live replica's lists; the lapsed dropped.
_DEMAND = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(live))
"""


class Lease(NamedTuple):
    """A held lease: its fencing token (the stream's epoch) and the value that proves it."""

    token: int
    value: str


class Snapshot(NamedTuple):
    position: Position
    fields: dict[str, str]


class Demand(NamedTuple):
    """Markets followed on price and on deals."""

    price: frozenset[str]
    deals: frozenset[str]


class RelayStore(Protocol):
    def channel(self, stream: str) -> str: ...

    async def acquire(self, stream: str, holder: str, ttl: float) -> Lease | None: ...

    async def renew(self, stream: str, lease: Lease, ttl: float, snapshot_ttl: float) -> bool:
        ...

    async def release(self, stream: str, lease: Lease) -> None: ...

    async def publish(
        self, stream: str, lease: Lease, position: Position, fields: Mapping[str, str],
        messages: Sequence[str], *, reset: bool, snapshot_ttl: float,
    ) -> bool: ...

    async def snapshot(self, stream: str) -> Snapshot | None: ...

    async def presence(self, stream: str, holder: str, here: bool, ttl: float) -> int: ...


class RedisRelayStore:
    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}relay:"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._publish = client.register_script(_PUBLISH)
        self._presence = client.register_script(_PRESENCE)
        self._set_demand = client.register_script(_SET_DEMAND)
        self._demand = client.register_script(_DEMAND)

    def channel(self, stream: str) -> str:
        return f"{self._prefix}{stream}"

    @property
    def demand_channel(self) -> str:
        return f"{self._prefix}demand"

    async def acquire(self, stream: str, holder: str, ttl: float) -> Lease | None:
        """The stream's lease for ``ttl`` s when nobody holds it, with a new token."""
        with _unavailable():
            token = await self._acquire(keys=[self._key("lease", stream),
                                              self._key("fence", stream)],
                                        args=[holder, milliseconds(ttl)])
        return None if token is None else Lease(int(token), f"{int(token)}:{holder}")

    async def renew(self, stream: str, lease: Lease, ttl: float, snapshot_ttl: float) -> bool:
        """Extend ``lease`` by ``ttl`` s and its snapshot by ``snapshot_ttl``; False when the
        lease lapsed (another may hold the stream)."""
        with _unavailable():
            return bool(await self._renew(
                keys=[self._key("lease", stream), self._key("snap", stream)],
                args=[lease.value, milliseconds(ttl), milliseconds(snapshot_ttl)]))

    async def release(self, stream: str, lease: Lease) -> None:
        with _unavailable():
            await self._release(keys=[self._key("lease", stream)], args=[lease.value])

    async def publish(
        self, stream: str, lease: Lease, position: Position, fields: Mapping[str, str],
        messages: Sequence[str], *, reset: bool, snapshot_ttl: float,
    ) -> bool:
        """Write the snapshot at ``position`` (``fields`` changed; ``reset`` drops the others)
        and publish ``messages``, all only while ``lease`` holds; False when it does not."""
        pairs = [item for field in fields.items() for item in field]
        args: list[str | int] = [lease.value, position.epoch, position.seq, int(reset),
                                 milliseconds(snapshot_ttl), len(fields), *pairs, *messages]
        with _unavailable():
            return bool(await self._publish(
                keys=[self._key("lease", stream), self._key("snap", stream),
                      self.channel(stream)], args=args))

    async def snapshot(self, stream: str) -> Snapshot | None:
        """The leader's last snapshot; None before any (or after it expired)."""
        with _unavailable():
            raw = await self._client.hgetall(self._key("snap", stream))
        if not raw:
            return None
        fields = {_text(key): _text(value) for key, value in raw.items()}
        try:
            position = Position(int(fields.pop("epoch")), int(fields.pop("seq")))
        except (KeyError, ValueError) as exc:
            raise RelayFormatError(f"snapshot of {stream}: no epoch or seq") from exc
        return Snapshot(position, fields)

    async def presence(self, stream: str, holder: str, here: bool, ttl: float) -> int:
        """Mark ``holder`` as having a client of ``stream`` (for ``ttl`` s) or not; the number
        of other replicas that have one."""
        with _unavailable():
            return int(await self._presence(keys=[self._key("presence", stream)],
                                            args=[holder, int(here), milliseconds(ttl)]))

    async def set_demand(self, holder: str, demand: Demand, ttl: float) -> None:
        """Record what ``holder`` follows on price and deals (nudging the leader if it changed)."""
        lists = json.dumps([sorted(demand.price), sorted(demand.deals)])
        with _unavailable():
            await self._set_demand(
                keys=[self._key("demand"), self._key("demand-alive"), self.demand_channel],
                args=[holder, lists, milliseconds(ttl)])

    async def demand(self) -> Demand:
        """The union of what every live replica follows."""
        with _unavailable():
            rows = await self._demand(keys=[self._key("demand"), self._key("demand-alive")])
        price: set[str] = set()
        deals: set[str] = set()
        for row in rows:
            try:
                lists = json.loads(row) if row is not None else [[], []]
                price.update(str(market) for market in lists[0])
                deals.update(str(market) for market in lists[1])
            except (ValueError, IndexError, TypeError):
                continue  # another version's row: its replica rewrites it on its next tick
        return Demand(frozenset(price), frozenset(deals))

    def _key(self, kind: str, stream: str | None = None) -> str:
        return f"{self._prefix}{kind}" if stream is None else f"{self._prefix}{kind}:{stream}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the market-data relay (Redis) is unavailable", _CODE)
