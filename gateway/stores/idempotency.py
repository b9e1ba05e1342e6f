"""Idempotency keys of the order desk: the first request with a key is forwarded, repeats replay it.

Owns the ``IdempotencyStore`` protocol, the ``Claim`` it answers and the ``StoredResponse`` it
keeps, and two implementations: ``MemoryIdempotencyStore`` (the single-process embedded default)
and ``RedisIdempotencyStore`` (shared by every replica). A key belongs to one user: the same key
of two users names two unrelated requests. Each key lives through four states: absent, in flight
(claimed, not answered yet), done (the response is kept) and unknown (sent, outcome never came
back; the audit reference says where to look).

An in-flight claim is a *lease*: it holds for ``lease`` seconds unless its claimant renews it
while it waits for the exchange. A claim whose lease lapsed (its replica died, or lost Redis)
is unknown from then on, pointing at the audit intent the claimant named when it claimed: the
intent is written before anything is sent, so a reconciler can tell "never sent" from "sent".

A claim may also decide the request's rate limits (``checks``), in the same atomic step: a key
already held is answered without spending anything (a replay costs no quota and no pacing); an
absent one is claimed only when every limit has room, and is then counted in each. A caller whose
own checks refused the request (``screened=False``) still learns a held key's state, and nothing
is claimed or spent.

This module does not compute fingerprints, validate keys (the web layer limits their length and
characters), decide what a replay or a conflict renders, or own the Redis client (whoever built
it closes it).

Redis layout (every operation is one round trip; ``claim`` is one Lua script, so of concurrent
duplicates on any number of replicas exactly one gets ``NEW``):

- ``{prefix}idem:{len(user)}:{user}:{key}``  hash; the user's length makes the name unambiguous
  whatever ``:`` the user or the key holds. Fields: ``state`` (``in_flight`` / ``done`` /
  ``unknown``), ``fp``, ``ref`` (the audit intent named at the claim), for in flight ``lease``
  (server time in ms when it lapses), for done ``status``, ``body`` (raw bytes), ``ctype``
  (absent when the response had none). Every write sets ``PEXPIRE ttl``.
- the rate-limit zsets of ``gateway.stores.rate_limits`` (same prefix), when a claim decides
  limits.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import redis.asyncio
from redis.exceptions import ResponseError

from gateway.stores.rate_limits import (
    LIMITS_LUA,
    Decision,
    LimitCheck,
    MemoryRateLimitStore,
    decision_of_reply,
    limit_member,
    redis_limit_args,
    redis_limit_keys,
)
from gateway.stores.redis_client import milliseconds, translating_errors

Clock = Callable[[], float]
_CODE = "idempotency_unavailable"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes  # the bytes the client got, unchanged
    content_type: str | None


class ClaimState(Enum):
    NEW = "new"  # the caller owns the key: forward, then complete / mark_unknown / release
    REPLAY = "replay"  # answered before: ``response`` is what to send again
    CONFLICT = "conflict"  # the key was used for another request (another fingerprint)
    IN_FLIGHT = "in_flight"  # the first request is still running: claim again later
    UNKNOWN = "unknown"  # the first request's outcome is unknown: ``audit_ref`` says where
    ABSENT = "absent"  # not claimed: the caller's checks or the limits refused; nothing held


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    response: StoredResponse | None = None
    audit_ref: str | None = None
    decision: Decision | None = None  # the limits' decision, when this claim consulted them


class IdempotencyStore(Protocol):
    async def claim(
        self, user: str, key: str, fingerprint: str, ttl: float, *, lease: float | None = None,
        intent_ref: str = "", checks: Sequence[LimitCheck] = (), screened: bool = True,
    ) -> Claim:
        """Atomically: a key held with another fingerprint is CONFLICT; a held key is its state
        (IN_FLIGHT while its lease holds, then UNKNOWN with the intent named at its claim;
        REPLAY with the response; UNKNOWN with the audit reference), nothing spent. An absent
        key is ABSENT when not ``screened`` or when a limit of ``checks`` is full (``decision``
        says which), else claimed: in flight for ``lease`` s (default ``ttl``), kept ``ttl`` s,
        counted in every check, NEW (with the ``decision``). Raises ``ValueError`` for a ``ttl``
        or ``lease`` that is not a positive finite number; ``StoreUnavailable``."""

    async def renew(self, user: str, key: str, lease: float) -> None:
        """Extend an in-flight claim's lease to ``lease`` s from now (the claimant still waits).
        Anything else is left as it is. Raises ``StoreUnavailable``."""

    async def complete(self, user: str, key: str, response: StoredResponse, ttl: float) -> None:
        """Keep ``response`` for ``ttl`` s as the answer to the claimed key. A key no longer
        held (expired, released, or, for memory, forgotten for room) is left absent: there is
        no fingerprint to attach the response to. Raises ``StoreUnavailable``."""

    async def mark_unknown(self, user: str, key: str, audit_ref: str, ttl: float) -> None:
        """Record for ``ttl`` s that the claimed request was sent but its outcome is unknown
        (same rule as ``complete`` for a key no longer held). Raises ``StoreUnavailable``."""

    async def release(self, user: str, key: str) -> None:
        """Forget an in-flight claim (refused before reaching the exchange) so a retry is fresh.

        A key that is done or unknown is kept: releasing never erases an answer. Raises
        ``StoreUnavailable``."""

    async def close(self) -> None:
        """Release what the store holds itself (never the Redis client it was given)."""


def _check_ttl(ttl: float, name: str = "ttl") -> None:
    if not 0 < ttl < math.inf:
        raise ValueError(f"{name} must be a positive finite number of seconds, not {ttl!r}")


# --- memory ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    expires_at: float
    lease_until: float
    intent_ref: str
    state: ClaimState = ClaimState.IN_FLIGHT  # IN_FLIGHT, REPLAY (done) or UNKNOWN
    response: StoredResponse | None = None
    audit_ref: str | None = None

    def claim_for(self, fingerprint: str, now: float) -> Claim:
        if fingerprint != self.fingerprint:
            return Claim(ClaimState.CONFLICT)
        if self.state is ClaimState.IN_FLIGHT and self.lease_until <= now:
            self.state, self.audit_ref = ClaimState.UNKNOWN, self.intent_ref
        return Claim(self.state, self.response, self.audit_ref)


class MemoryIdempotencyStore:
    """The single-process store: entries in write order, the oldest forgotten for room.

    The ttl is in practice one setting, so write order is also expiry order: every write sweeps
    expired entries from the oldest end; an entry with a shorter ttl written later is dropped
    when it is next read. Claims that decide limits need the process's ``limits`` store.
    """

    def __init__(self, clock: Clock = time.time, max_entries: int = 100_000,
                 limits: MemoryRateLimitStore | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._limits = limits
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    async def claim(
        self, user: str, key: str, fingerprint: str, ttl: float, *, lease: float | None = None,
        intent_ref: str = "", checks: Sequence[LimitCheck] = (), screened: bool = True,
    ) -> Claim:
        _check_ttl(ttl)
        lease = ttl if lease is None else lease
        _check_ttl(lease, "lease")
        now = self._clock()
        entry = self._live((user, key), now)
        if entry is not None:
            return entry.claim_for(fingerprint, now)
        if not screened:
            return Claim(ClaimState.ABSENT)
        decision = None
        if checks:
            if self._limits is None:
                raise ValueError("a claim that decides limits needs the store's limits")
            decision = self._limits.acquire_now(checks)  # no suspension: atomic with the claim
            if not decision.allowed:
                return Claim(ClaimState.ABSENT, decision=decision)
        self._write((user, key), _Entry(fingerprint, now + ttl, now + lease, intent_ref), now)
        return Claim(ClaimState.NEW, decision=decision)

    async def renew(self, user: str, key: str, lease: float) -> None:
        _check_ttl(lease, "lease")
        now = self._clock()
        entry = self._live((user, key), now)
        if entry is not None and entry.state is ClaimState.IN_FLIGHT and entry.lease_until > now:
            entry.lease_until = now + lease

    async def complete(self, user: str, key: str, response: StoredResponse, ttl: float) -> None:
        self._update((user, key), ttl, ClaimState.REPLAY, response=response)

    async def mark_unknown(self, user: str, key: str, audit_ref: str, ttl: float) -> None:
        self._update((user, key), ttl, ClaimState.UNKNOWN, audit_ref=audit_ref)

    async def release(self, user: str, key: str) -> None:
        entry = self._live((user, key), self._clock())
        if entry is not None and entry.state is ClaimState.IN_FLIGHT:
            del self._entries[(user, key)]

    async def close(self) -> None:
        return None

    @property
    def entries(self) -> int:
        """Keys held, expired ones not yet swept included (a gauge)."""
        return len(self._entries)

    def _update(self, name: tuple[str, str], ttl: float, state: ClaimState, *,
                response: StoredResponse | None = None, audit_ref: str | None = None) -> None:
        _check_ttl(ttl)
        now = self._clock()
        entry = self._live(name, now)
        if entry is None:
            return
        entry.state, entry.response, entry.audit_ref = state, response, audit_ref
        entry.expires_at = now + ttl
        self._write(name, entry, now)

    def _live(self, name: tuple[str, str], now: float) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None and entry.expires_at <= now:
            del self._entries[name]
            return None
        return entry

    def _write(self, name: tuple[str, str], entry: _Entry, now: float) -> None:
        self._entries[name] = entry
        self._entries.move_to_end(name)
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now and len(self._entries) <= self._max:
                break
            self._entries.popitem(last=False)


# --- Redis -------------------------------------------------------------------------------------

# KEYS[1]: the entry, KEYS[2..]: the limits' zsets. ARGV: fingerprint, ttl ms, lease ms, intent
# ref, '1' if screened, limit member, then count and window per limit.
# Reply: {'conflict'} | {'absent'} | {state, status, ctype, body, ref} for a held key |
# {'new' or 'limited', now, then per limit: used, frees_at} (limits) | {'new'} (no limits).
_CLAIM = LIMITS_LUA + """
local now = server_micros()
local now_ms = math.floor(now / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'ctype', 'body', 'ref', 'lease')
if h[1] then
  if h[2] ~= ARGV[1] then return {'conflict'} end
  if h[1] == 'in_flight' and tonumber(h[7] or '0') <= now_ms then
    redis.call('HSET', KEYS[1], 'state', 'unknown')
    redis.call('HDEL', KEYS[1], 'lease')
    return {'unknown', false, false, false, h[6]}
  end
  return {h[1], h[3], h[4], h[5], h[6]}
end
if ARGV[5] ~= '1' then return {'absent'} end
local reply = {'new'}
if #KEYS > 1 then
  local keys, args = {}, {}
  for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
  for i = 7, #ARGV do args[#args + 1] = ARGV[i] end
  local used, full = check_limits(keys, args, now)
  reply = settle_limits(keys, args, now, ARGV[6], used, full, {full and 'limited' or 'new', now})
  if full then return reply end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1], 'ref', ARGV[4],
           'lease', now_ms + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return reply
"""
# KEYS[1]: the entry. ARGV: lease in ms. Only a claim whose lease still holds is renewed.
_RENEW = """
local h = redis.call('HMGET', KEYS[1], 'state', 'lease')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if h[1] == 'in_flight' and tonumber(h[2] or '0') > now_ms then
  redis.call('HSET', KEYS[1], 'lease', now_ms + tonumber(ARGV[1]))
  return 1
end
return 0
"""
# KEYS[1]: the entry. ARGV: ttl in ms, status, body, content type, '1' if there is one.
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'body', ARGV[3])
redis.call('HDEL', KEYS[1], 'lease')
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'ctype', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'ctype')
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1]: the entry. ARGV: ttl in ms, audit reference.
_MARK_UNKNOWN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'unknown', 'ref', ARGV[2])
redis.call('HDEL', KEYS[1], 'status', 'ctype', 'body', 'lease')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1]: the entry. Only an in-flight claim is forgotten: an answer is never erased.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'in_flight' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisIdempotencyStore:
    """Idempotency keys shared through Redis by every replica (layout: the module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._store_prefix = prefix
        self._prefix = f"{prefix}idem:"
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._mark_unknown = client.register_script(_MARK_UNKNOWN)
        self._release = client.register_script(_RELEASE)

    async def claim(
        self, user: str, key: str, fingerprint: str, ttl: float, *, lease: float | None = None,
        intent_ref: str = "", checks: Sequence[LimitCheck] = (), screened: bool = True,
    ) -> Claim:
        _check_ttl(ttl)
        lease = ttl if lease is None else lease
        _check_ttl(lease, "lease")
        keys = [self._name(user, key), *redis_limit_keys(self._store_prefix, checks)]
        args: list[str | int] = [fingerprint, milliseconds(ttl), milliseconds(lease), intent_ref,
                                 "1" if screened else "0", limit_member(),
                                 *redis_limit_args(checks)]
        with _unavailable():
            reply = await self._claim(keys=keys, args=args)
        return _decode_claim(reply, checks)

    async def renew(self, user: str, key: str, lease: float) -> None:
        _check_ttl(lease, "lease")
        with _unavailable():
            await self._renew(keys=[self._name(user, key)], args=[milliseconds(lease)])

    async def complete(self, user: str, key: str, response: StoredResponse, ttl: float) -> None:
        _check_ttl(ttl)
        ctype = response.content_type
        args: list[bytes | str | int] = [milliseconds(ttl), response.status, response.body,
                                         ctype or "", "0" if ctype is None else "1"]
        with _unavailable():
            await self._complete(keys=[self._name(user, key)], args=args)

    async def mark_unknown(self, user: str, key: str, audit_ref: str, ttl: float) -> None:
        _check_ttl(ttl)
        args = (milliseconds(ttl), audit_ref)
        with _unavailable():
            await self._mark_unknown(keys=[self._name(user, key)], args=args)

    async def release(self, user: str, key: str) -> None:
        with _unavailable():
            await self._release(keys=[self._name(user, key)])

    async def close(self) -> None:
        return None  # the client belongs to whoever built it

    def _name(self, user: str, key: str) -> str:
        return f"{self._prefix}{len(user)}:{user}:{key}"


_STATES = {b"in_flight": ClaimState.IN_FLIGHT, b"done": ClaimState.REPLAY,
           b"unknown": ClaimState.UNKNOWN, b"new": ClaimState.NEW,
           b"conflict": ClaimState.CONFLICT, b"absent": ClaimState.ABSENT,
           b"limited": ClaimState.ABSENT}


def _decode_claim(reply: object, checks: Sequence[LimitCheck]) -> Claim:
    """The ``Claim`` a claim script's reply stands for; ``ResponseError`` for anything else."""
    if not isinstance(reply, list) or not reply or reply[0] not in _STATES:
        raise ResponseError("unexpected reply from the idempotency claim script")
    state = _STATES[reply[0]]
    if state in (ClaimState.NEW, ClaimState.ABSENT) and len(reply) > 1:
        allowed = reply[0] == b"new"
        return Claim(state, decision=decision_of_reply(checks, reply[1:], allowed=allowed))
    if state in (ClaimState.NEW, ClaimState.CONFLICT, ClaimState.IN_FLIGHT, ClaimState.ABSENT):
        return Claim(state)
    if len(reply) != 5:
        raise ResponseError("unexpected reply from the idempotency claim script")
    _, status, ctype, body, ref = reply
    try:
        if state is ClaimState.UNKNOWN:
            return Claim(state, audit_ref=_text(ref))
        if not isinstance(body, bytes):
            raise ResponseError("an idempotency entry marked done holds no body")
        content_type = None if ctype is None else _text(ctype)
        return Claim(state, response=StoredResponse(int(_text(status)), body, content_type))
    except ValueError as exc:  # UnicodeDecodeError included
        raise ResponseError(f"an unreadable idempotency entry: {exc}") from exc


def _text(value: object) -> str:
    if not isinstance(value, bytes):
        raise ResponseError(f"an idempotency entry lacks a field ({type(value).__name__})")
    return value.decode()


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the idempotency store (Redis) is unavailable", _CODE)
