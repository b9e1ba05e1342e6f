"""The cluster epoch in Redis: reading it with the chain head, creating it, reporting a loss,
acknowledging one.

Redis layout (beside the audit chain's keys, ``gateway.stores.audit``):

- ``{prefix}cluster:epoch``  hash ``id`` (random hex), ``segment`` (the seq of the first record
  of the segment the acknowledgement that wrote it appended; ``0`` for an epoch made at start)
- ``{prefix}cluster:lost``   hash ``epoch``, ``seq``, ``hash``, ``reason``: a loss a replica saw
  and reported (the newest head any reporting replica knew), until it is acknowledged

Each call is one Lua script, so what it reads (or changes) is as of one moment. ``claim`` makes
an epoch only when there is neither an epoch nor a reported loss: a replica that starts while a
loss is reported joins the loss, not a new state. ``report`` raises the reported head, never
lowers it, and only while Redis still shows the epoch the reporter saw (an acknowledgement in
between wins). ``acknowledge`` writes a new epoch, deletes the report and appends the new
segment's first record in the same step: after the head it names when Redis still holds exactly
that head, else after an anchor set to it, once the old records Redis holds were all exported
(they are dropped; the exported mark becomes that head).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager

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
from gateway.core.cluster_state import EpochView, LossReport
from gateway.errors import RecordsNotExported, StateNotLost
from gateway.stores.audit import HEAD_OR_ANCHOR, LINK_AND_PUSH, AuditKeys, triple
from gateway.stores.redis_client import translating_errors

UNAVAILABLE = "cluster_epoch_unavailable"
# How the acknowledgement script's refusals start ("MOVED" would read as a Redis Cluster redirect).
_CHANGED, _NOT_EXPORTED = "STATE_CHANGED", "NOT_EXPORTED"

# KEYS: epoch, head, anchor, lost.
_VIEW = HEAD_OR_ANCHOR + """
local epoch = redis.call('HMGET', KEYS[1], 'id', 'segment')
local lost = redis.call('HMGET', KEYS[4], 'epoch', 'seq', 'hash', 'reason')
return {epoch[1], epoch[2], point[1], point[2], lost[1], lost[2], lost[3], lost[4]}
"""
# KEYS: as _VIEW. ARGV: a new id.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'segment', '0')
end
""" + _VIEW
# KEYS: epoch, lost. ARGV: the epoch id the reporter saw ('' none), the report's epoch, seq,
# hash, reason.
_REPORT = """
if (redis.call('HGET', KEYS[1], 'id') or '') ~= ARGV[1] then return 0 end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '-1')
if seq >= tonumber(ARGV[3]) then return 0 end
if seq < 0 then redis.call('HSET', KEYS[2], 'reason', ARGV[5]) end
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'seq', ARGV[3], 'hash', ARGV[4])
return 1
"""
# KEYS: records, head, anchor, exported, epoch, lost. ARGV: segment JSON, its digest, GENESIS,
# the new id, the epoch id seen ('' none), the reported seq seen ('' none), the head to follow
# (seq, hash), '1' to follow it in place.
_ACKNOWLEDGE = HEAD_OR_ANCHOR + """
if (redis.call('HGET', KEYS[5], 'id') or '') ~= ARGV[5]
   or (redis.call('HGET', KEYS[6], 'seq') or '') ~= ARGV[6] then
  return redis.error_reply('STATE_CHANGED')
end
if ARGV[9] == '1' then
  if (point[1] or '0') ~= ARGV[7] or (point[2] or ARGV[3]) ~= ARGV[8] then
    return redis.error_reply('STATE_CHANGED')
  end
else
  local held = tonumber(point[1] or '0')
  local exported = tonumber(redis.call('GET', KEYS[4]) or '0')
  if redis.call('LLEN', KEYS[1]) > 0 and exported < held then
    local first = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0') + 1
    return redis.error_reply('NOT_EXPORTED ' .. math.max(first, exported + 1) .. ' ' .. held)
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[3], 'seq', ARGV[7], 'hash', ARGV[8])
  redis.call('SET', KEYS[4], ARGV[7])
  point = {ARGV[7], ARGV[8]}
end
""" + LINK_AND_PUSH + """
redis.call('HSET', KEYS[5], 'id', ARGV[4], 'segment', seq)
redis.call('DEL', KEYS[6])
return {seq, hash, prev}
"""


def new_epoch() -> str:
    return secrets.token_hex(16)


class ClusterEpochStore:
    """The epoch of one installation (``prefix``); the client is the caller's to close."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        keys = AuditKeys.under(prefix)
        self._view_keys = [keys.epoch, keys.head, keys.anchor, keys.lost]
        self._report_keys = [keys.epoch, keys.lost]
        self._acknowledge_keys = [keys.records, keys.head, keys.anchor, keys.exported,
                                  keys.epoch, keys.lost]
        self._view = client.register_script(_VIEW)
        self._claim = client.register_script(_CLAIM)
        self._report = client.register_script(_REPORT)
        self._acknowledge = client.register_script(_ACKNOWLEDGE)

    async def view(self) -> EpochView:
        with _unavailable():
            return epoch_view(await self._view(keys=self._view_keys))

    async def claim(self) -> tuple[EpochView, bool]:
        """The epoch, made first when Redis holds none and no reported loss; whether it was."""
        made = new_epoch()
        with _unavailable():
            view = epoch_view(await self._claim(keys=self._view_keys, args=[made]))
        return view, view.epoch == made

    async def report(self, seen: str | None, loss: LossReport) -> bool:
        """Report ``loss`` (see the module docstring); whether Redis took it."""
        with _unavailable():
            taken = await self._report(keys=self._report_keys, args=[
                seen or "", loss.epoch, loss.head.seq, loss.head.hash, loss.reason])
        return bool(taken)

    async def acknowledge(self, segment: AuditEvent, *, seen: EpochView, follows: ChainPoint,
                          in_place: bool, epoch: str) -> AuditRecord:
        """Write ``epoch`` and append ``segment`` after ``follows`` (see the module docstring).

        ``StateNotLost`` when Redis no longer shows ``seen`` (someone acknowledged first, or a
        replica raised the report); ``RecordsNotExported`` when old records would be dropped
        unexported."""
        text, digest = canonical_with_digest(segment)
        reported = "" if seen.loss is None else str(seen.loss.head.seq)
        args: Sequence[str | int] = [text, digest, GENESIS, epoch, seen.epoch or "", reported,
                                     follows.seq, follows.hash, "1" if in_place else "0"]
        with _unavailable():
            try:
                reply = await self._acknowledge(keys=self._acknowledge_keys, args=args)
            except ResponseError as exc:
                raise _refusal(exc) from None
        seq, hash_, prev = triple(reply, "the acknowledgement script")
        return AuditRecord(seq, prev, hash_, segment)


def _refusal(exc: ResponseError) -> Exception:
    text = str(exc)
    if text.startswith(_CHANGED):
        return StateNotLost("the shared state changed while acknowledging (another "
                            "acknowledgement came first, or a replica reported a newer head); "
                            "look again")
    if text.startswith(_NOT_EXPORTED):
        first, last = text.split()[1:3]
        return RecordsNotExported(
            f"Redis still holds records {first} to {last} that no export wrote out; run "
            "`expie-gateway audit export --since … --mark-exported` first (acknowledging drops "
            "them)")
    return exc


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the cluster epoch (Redis) is unavailable", UNAVAILABLE,
                              name_cause=True)


def epoch_view(reply: object) -> EpochView:
    if not isinstance(reply, list) or len(reply) != 8:
        raise ResponseError("unexpected reply from a cluster epoch script")
    epoch, segment, seq, hash_, lost_epoch, lost_seq, lost_hash, reason = reply
    head = START if seq is None else ChainPoint(int(seq), _text(hash_))
    loss = None if lost_seq is None else LossReport(
        _text(lost_epoch or b""), ChainPoint(int(lost_seq), _text(lost_hash)),
        _text(reason or b""))
    return EpochView(None if epoch is None else _text(epoch),
                     segment is not None and int(segment) > 0, head, loss)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
