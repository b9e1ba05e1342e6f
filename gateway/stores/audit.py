"""The audit log: where audit records are appended, read back, marked exported and trimmed.

Owns the ``AuditLog`` protocol, ``RedisAuditLog`` (one chain shared by every replica) and the
``open_audit_log`` factory; ``FileAuditLog`` (the single-process embedded default) lives in
``gateway.stores.audit_file`` and is re-exported here. A log stores exactly the line
``AuditRecord.to_json`` makes and hands back parsed records (a line that does not parse raises
``MalformedRecord``). It does not decide what to record, when to refuse an order (the
``AuditTrail`` service does) or what a broken chain means (``gateway.core.audit_chain``), and does
not own the Redis client: whoever built it closes it.

Redis layout (every write is one Lua script, so many replicas append to ONE chain atomically):

- ``{prefix}audit:records``   list of record JSON lines; index 0 is the record after the anchor
- ``{prefix}audit:head``      hash ``seq``, ``hash``: the newest record (absent before the first)
- ``{prefix}audit:anchor``    hash ``seq``, ``hash``: the last trimmed record (absent: none)
- ``{prefix}audit:exported``  integer: the highest seq an export has written out
- ``{prefix}cluster:epoch``, ``{prefix}cluster:lost``: the cluster epoch and a reported state
  loss (``gateway.stores.cluster_epoch``). With a ``guard`` (the gateway's own log), an append
  refuses unless the epoch is the one the replica joined, no loss is reported and the head is not
  older than one the replica saw: a Redis that lost its data never gets a new chain on its own.

The append script receives the event's canonical JSON and its SHA-256 digest, reads the head,
computes ``seq``, ``prev`` and the link with ``redis.sha1hex`` (see ``gateway.core.audit_chain``
for why SHA-1 there is sound), builds the record line byte for byte as ``record_line`` does,
RPUSHes it and moves the head. Durability is Redis's: run it with ``appendonly yes`` (and
``appendfsync always`` where a lost second of audit is not acceptable). A reply lost after the
script ran (a timeout) is reported as ``StoreUnavailable`` although the record is stored; a retry
then stores the event twice, under its one event ``id``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio
from redis.exceptions import ResponseError

from gateway.core.audit_chain import (
    GENESIS,
    START,
    AuditEvent,
    AuditRecord,
    ChainPoint,
    canonical_with_digest,
)
from gateway.core.mapping_reader import ConfigError
from gateway.errors import StateLost, StoreUnavailable
from gateway.settings import Settings
from gateway.stores.audit_file import FileAuditLog
from gateway.stores.redis_client import translating_errors

__all__ = ["AppendGuard", "AuditKeys", "AuditLog", "FileAuditLog", "RedisAuditLog",
           "open_audit_log"]

UNAVAILABLE = "audit_unavailable"
STATE_LOST = "STATE_LOST"  # how the guarded append script's refusal starts
_TRIM_BATCH = 1000  # records looked at per trim script call: keeps each call short in Redis


class AuditLog(Protocol):
    async def start(self) -> None:
        """Open the log (take the file lock, recover the head); raises ``StoreUnavailable``."""

    async def close(self) -> None:
        """Finish pending writes and release the log."""

    async def append(self, event: AuditEvent) -> AuditRecord:
        """Chain ``event`` after the head; durable when it returns. ``StoreUnavailable``
        (code ``audit_unavailable``) otherwise."""

    async def read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """Up to ``limit`` records from the one after ``after_seq``, in stored order (ascending
        seq unless the log was tampered with); the oldest kept when ``after_seq`` was trimmed."""

    async def head(self) -> ChainPoint:
        """The newest record; the anchor when there is none."""

    async def anchor(self) -> ChainPoint:
        """The last trimmed record; ``ChainPoint(0, GENESIS)`` when nothing was trimmed."""

    async def exported(self) -> int:
        """The highest seq an export has written out (0: none)."""

    async def mark_exported(self, seq: int) -> None:
        """Record that an export wrote every record up to ``seq`` (only moves forward, never
        past the head)."""

    async def trim(self, before: float) -> int:
        """Remove the oldest records whose ``event.time`` is before ``before`` AND whose seq is
        at most ``exported``, stopping at the first that is not; moves the anchor; returns how
        many were removed."""


class AppendGuard(Protocol):
    """What a guarded append must find in Redis (``gateway.core.cluster_state.ClusterState``)."""

    def append_guard(self) -> tuple[str, int]:
        """The epoch, and the lowest head seq the new record may follow; raises when no append
        may happen at all (``StateLost``, ``StoreUnavailable``)."""

    def wrote(self, point: ChainPoint) -> None:
        """A record was stored at ``point``."""

    def lose(self, reason: str) -> bool:
        """Redis refused the append because the state is lost."""


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The Redis keys of one installation's audit chain and cluster epoch."""

    records: str
    head: str
    anchor: str
    exported: str
    epoch: str
    lost: str

    @classmethod
    def under(cls, prefix: str) -> AuditKeys:
        audit, cluster = f"{prefix}audit:", f"{prefix}cluster:"
        return cls(f"{audit}records", f"{audit}head", f"{audit}anchor", f"{audit}exported",
                   f"{cluster}epoch", f"{cluster}lost")


HEAD_OR_ANCHOR = """
local point = redis.call('HMGET', KEYS[2], 'seq', 'hash')
if not point[1] then point = redis.call('HMGET', KEYS[3], 'seq', 'hash') end
"""
# KEYS[1] records, KEYS[2] head; ARGV[1..3] event JSON, its digest, GENESIS; ``point`` the record
# to follow. Leaves ``seq``, ``hash``, ``prev`` of the new record.
LINK_AND_PUSH = """
local seq = string.format('%d', tonumber(point[1] or '0') + 1)
local prev = point[2] or ARGV[3]
local hash = redis.sha1hex(prev .. ':' .. seq .. ':' .. ARGV[2])
redis.call('RPUSH', KEYS[1],
  '{"event":' .. ARGV[1] .. ',"hash":"' .. hash .. '","prev":"' .. prev .. '","seq":' .. seq .. '}')
redis.call('HSET', KEYS[2], 'seq', seq, 'hash', hash)
"""
_RETURN_RECORD = "return {seq, hash, prev}\n"
# KEYS: records, head, anchor. ARGV: event JSON, its digest, GENESIS.
_APPEND = HEAD_OR_ANCHOR + LINK_AND_PUSH + _RETURN_RECORD
# KEYS: as _APPEND, then epoch, lost. ARGV: as _APPEND, then the epoch, the lowest head seq.
_GUARDED_APPEND = HEAD_OR_ANCHOR + """
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.error_reply('STATE_LOST a replica reported a state loss in Redis')
end
if redis.call('HGET', KEYS[4], 'id') ~= ARGV[4] then
  return redis.error_reply('STATE_LOST the cluster epoch in Redis is no longer ' .. ARGV[4])
end
if tonumber(point[1] or '0') < tonumber(ARGV[5]) then
  return redis.error_reply('STATE_LOST the audit chain head in Redis is seq ' ..
    (point[1] or '0') .. ', older than seq ' .. ARGV[5] .. ' this replica saw')
end
""" + LINK_AND_PUSH + _RETURN_RECORD
# KEYS: records, anchor. ARGV: after_seq, limit. Positions count from the anchor.
_READ = """
local start = math.max(tonumber(ARGV[1]) - tonumber(redis.call('HGET', KEYS[2], 'seq') or '0'), 0)
return redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
"""
# KEYS: exported, head. ARGV: seq. Never past the head: an unwritten record is not exported.
_MARK = """
local wanted = math.min(tonumber(ARGV[1]), tonumber(redis.call('HGET', KEYS[2], 'seq') or '0'))
if wanted > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%d', wanted))
end
return 0
"""
# KEYS: records, anchor, exported. ARGV: before, batch. Stops at an unreadable record, which
# stays for ``audit verify`` to report.
_TRIM = """
local exported = tonumber(redis.call('GET', KEYS[3]) or '0')
local lines = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local removed, last = 0, nil
for i, line in ipairs(lines) do
  local ok, record = pcall(cjson.decode, line)
  if not ok or type(record) ~= 'table' or type(record.event) ~= 'table'
     or type(record.hash) ~= 'string' then break end
  local seq, time = tonumber(record.seq), tonumber(record.event.time)
  if not seq or not time or seq > exported or time >= tonumber(ARGV[1]) then break end
  removed, last = i, record
end
if removed > 0 then
  redis.call('LTRIM', KEYS[1], removed, -1)
  redis.call('HSET', KEYS[2], 'seq', string.format('%d', last.seq), 'hash', last.hash)
end
return removed
"""


class RedisAuditLog:
    """One chain in Redis, appended to by every replica through one atomic script."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str,
                 guard: AppendGuard | None = None) -> None:
        self._client = client
        keys = AuditKeys.under(prefix)
        self._records, self._head, self._anchor, self._exported = (
            keys.records, keys.head, keys.anchor, keys.exported)
        self._guarded_keys = [keys.records, keys.head, keys.anchor, keys.epoch, keys.lost]
        self._guard = guard
        self._append = client.register_script(_APPEND if guard is None else _GUARDED_APPEND)
        self._read = client.register_script(_READ)
        self._mark = client.register_script(_MARK)
        self._trim = client.register_script(_TRIM)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, event: AuditEvent) -> AuditRecord:
        text, digest = canonical_with_digest(event)
        guard = self._guard
        if guard is None:
            with _unavailable():
                reply = await self._append(keys=[self._records, self._head, self._anchor],
                                           args=[text, digest, GENESIS])
            return _record(reply, event)
        epoch, lowest = guard.append_guard()
        try:
            with _unavailable():
                reply = await self._append(keys=self._guarded_keys,
                                           args=[text, digest, GENESIS, epoch, lowest])
        except StoreUnavailable as exc:
            raise _lost(exc, guard) from exc.__cause__
        record = _record(reply, event)
        guard.wrote(ChainPoint(record.seq, record.hash))
        return record

    async def read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        with _unavailable():
            lines = await self._read(keys=[self._records, self._anchor], args=[after_seq, limit])
        return [AuditRecord.from_json(line) for line in lines]

    async def head(self) -> ChainPoint:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(self._head, ["seq", "hash"])
            pipe.hmget(self._anchor, ["seq", "hash"])
            with _unavailable():
                head, anchor = await pipe.execute()
        return _point(head) or _point(anchor) or START

    async def anchor(self) -> ChainPoint:
        with _unavailable():
            return _point(await self._client.hmget(self._anchor, ["seq", "hash"])) or START

    async def exported(self) -> int:
        with _unavailable():
            return int(await self._client.get(self._exported) or 0)

    async def mark_exported(self, seq: int) -> None:
        with _unavailable():
            await self._mark(keys=[self._exported, self._head], args=[seq])

    async def trim(self, before: float) -> int:
        total = 0
        while True:
            with _unavailable():
                removed = int(await self._trim(
                    keys=[self._records, self._anchor, self._exported],
                    args=[repr(before), _TRIM_BATCH]))
            total += removed
            if removed < _TRIM_BATCH:
                return total


def open_audit_log(settings: Settings, client: redis.asyncio.Redis | None, *,
                   read_only: bool = False, guard: AppendGuard | None = None) -> AuditLog:
    """Redis when ``settings.audit_in_redis`` (``client`` required), else the file.

    ``read_only`` opens the file without taking its writer lock, for ``audit export`` and
    ``audit verify`` beside a running gateway; it makes no difference to Redis. ``guard`` (the
    gateway's cluster state) makes every append in Redis check the epoch and the head first.
    """
    if settings.audit_in_redis:
        if client is None:
            raise ConfigError("audit.backend: the audit log is in Redis but redis.url is not set")
        return RedisAuditLog(client, settings.redis.key_prefix, guard)
    return FileAuditLog(settings.audit.file, fsync=settings.audit.fsync, read_only=read_only)


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the audit log (Redis) is unavailable", UNAVAILABLE, name_cause=True)


def _lost(exc: StoreUnavailable, guard: AppendGuard) -> StoreUnavailable:
    """The guarded script's refusal as ``StateLost`` (telling the guard at once, before its next
    check); any other failure as it is."""
    cause = exc.__cause__
    if not isinstance(cause, ResponseError) or not str(cause).startswith(STATE_LOST):
        return exc
    reason = str(cause).removeprefix(STATE_LOST).strip()
    guard.lose(reason)
    return StateLost(f"Redis lost the gateway's shared state ({reason}); the record was not "
                     "appended")


def _record(reply: object, event: AuditEvent) -> AuditRecord:
    seq, hash_, prev = triple(reply, "the audit append script")
    return AuditRecord(seq, prev, hash_, event)


def triple(reply: object, script: str) -> tuple[int, str, str]:
    """A script's ``{seq, hash, prev}`` reply."""
    if not isinstance(reply, list) or len(reply) != 3:
        raise StoreUnavailable(f"unexpected reply from {script}", code=UNAVAILABLE)
    seq, hash_, prev = reply
    return int(seq), _text(hash_), _text(prev)


def _point(reply: object) -> ChainPoint | None:
    if not isinstance(reply, list) or reply[0] is None:
        return None
    return ChainPoint(int(reply[0]), _text(reply[1]))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
