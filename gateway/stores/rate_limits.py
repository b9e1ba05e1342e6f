"""Order-rate limits: sliding-window logs, decided all-or-nothing over several checks at once.

Owns the ``RateLimitStore`` protocol, its values (``Limit``, ``LimitCheck``, ``Decision``) and two
implementations: ``MemoryRateLimitStore`` (the single-process embedded default) and
``RedisRateLimitStore`` (shared by every replica), plus the rendering of a decision as a 429
(``to_error``) or as ``RateLimit-*`` headers (``headers``).

A sliding-window log, not a token bucket: "at most ``count`` in any ``window`` seconds" holds
exactly however the requests spread over the window (a bucket refilling within the window would
admit more). A request is admitted only if every check has room, and is then counted in every
check; a refused request is counted nowhere, so retrying while refused costs no quota.

This module does not choose the limits or name the keys (the order desk does), and does not own
the Redis client: whoever built it closes it.

Redis layout (one Lua script per decision, so replicas never race between a read and a write):

- ``{prefix}ratelimit:{key}``  zset: one member per admitted request (unique per request), score
                               the Redis server's ``TIME`` in microseconds; entries older than the
                               window are removed by the script; ``PEXPIRE``d to the window on
                               every admission, so an idle key disappears by itself.

The server's clock makes replicas with skewed clocks agree. ``TIME`` before writes needs effects
replication (the default since Redis 5). The keys of one decision must live on one node.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio

from gateway.errors import RateLimited, StoreUnavailable
from gateway.stores.redis_client import translating_errors

Clock = Callable[[], float]
"""Seconds on any steady scale: the memory store only measures how long entries have lived."""

_CODE = "rate_limit_unavailable"
_MICROS = 1_000_000
_MEMBER_BYTES = 12
_KEYS = "ratelimit:"


@dataclass(frozen=True, slots=True)
class Limit:
    count: int  # at most ``count`` admitted ...
    window: float  # ... in any ``window`` seconds (sliding)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a limit admits at least one request, not {self.count!r}")
        if not 0 < self.window < math.inf:
            raise ValueError(f"a window is a positive finite number of seconds: {self.window!r}")


@dataclass(frozen=True, slots=True)
class LimitCheck:
    key: str  # e.g. "user:alice:place"; the store adds its own prefix
    limit: Limit


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one ``acquire``, described by the check that decided it.

    That check is, when refused, the first full one; when admitted, the one with the fewest
    slots left (the first of those on a tie).
    """

    allowed: bool
    key: str
    limit: int  # that check's count
    remaining: int  # slots left in that check's window after this decision
    reset_after: float  # seconds until that check's next entry expires (a slot frees up)
    retry_after: float  # 0 when allowed; else seconds until this request would be admitted
    window: float = 0.0  # that check's window (seconds); every store sets it


class RateLimitStore(Protocol):
    async def acquire(self, checks: Sequence[LimitCheck]) -> Decision:
        """All or nothing: admitted only if every check has room, and then counted in every
        check; when any is full, nothing is counted.

        Raises ``ValueError`` for no checks or a key named twice;
        ``StoreUnavailable(code="rate_limit_unavailable")``.
        """

    async def close(self) -> None:
        """Release what the store holds itself (never the Redis client it was given)."""


# --- the decision, shared by both stores --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Usage:
    used: int  # entries in the window after the decision
    frees_in: float  # seconds until the entry whose expiry frees a slot expires


def _decide(checks: Sequence[LimitCheck], usage: Sequence[_Usage], allowed: bool) -> Decision:
    pairs = list(zip(checks, usage, strict=True))
    if allowed:
        check, use = min(pairs, key=lambda pair: pair[0].limit.count - pair[1].used)
        return _decision(check, use, allowed=True, retry_after=0.0)
    full = [(check, use) for check, use in pairs if use.used >= check.limit.count]
    retry_after = max(use.frees_in for _, use in full)
    return _decision(*full[0], allowed=False, retry_after=retry_after)


def _decision(check: LimitCheck, use: _Usage, *, allowed: bool, retry_after: float) -> Decision:
    return Decision(
        allowed=allowed, key=check.key, limit=check.limit.count,
        remaining=max(0, check.limit.count - use.used), reset_after=max(0.0, use.frees_in),
        retry_after=max(0.0, retry_after), window=check.limit.window)


def _validate(checks: Sequence[LimitCheck]) -> None:
    if not checks:
        raise ValueError("a rate-limit decision needs at least one check")
    if len({check.key for check in checks}) != len(checks):
        raise ValueError("a key may appear only once among the checks of one decision")


def _freeing_index(used: int, count: int) -> int:
    """Which entry (oldest first) must expire for the window to hold fewer than ``count``.

    The oldest one unless the window is over-full (the limit was lowered since): then more must go.
    """
    return max(0, used - count)


# --- rendering ----------------------------------------------------------------------------------


def to_error(decision: Decision, what: str) -> RateLimited:
    """The 429 for a refused ``decision``; ``what`` names the limit for a human, e.g.
    ``"place-order limit of user alice"``."""
    if decision.allowed:
        raise ValueError("an admitted decision is not an error")
    per = f" per {decision.window:g} s" if decision.window > 0 else ""
    return RateLimited(f"{what}: {decision.limit}{per}", limit=decision.limit,
                       retry_after=decision.retry_after, reset_after=decision.reset_after)


def headers(decision: Decision) -> dict[str, str]:
    """``RateLimit-*`` headers (draft-ietf-httpapi-ratelimit-headers) for an admitted response."""
    reset = math.ceil(decision.reset_after)
    if decision.remaining == 0:
        reset = max(1, reset)  # "0 s until reset" while nothing is left would invite a retry now
    return {"RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(reset)}


# --- memory -------------------------------------------------------------------------------------


class _Log:
    __slots__ = ("times", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.times: deque[float] = deque()  # admission times, oldest first

    def purge(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()


class MemoryRateLimitStore:
    """The single-process store: one deque of admission times per key.

    Memory stays bounded without a task: a key whose log is empty is forgotten, and every so
    many decisions (as many as there are keys) a sweep purges the keys nobody asked about since.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._since_sweep = 0

    async def acquire(self, checks: Sequence[LimitCheck]) -> Decision:
        return self.acquire_now(checks)

    def acquire_now(self, checks: Sequence[LimitCheck]) -> Decision:
        """``acquire`` without suspending: atomic with whatever the caller does around it."""
        _validate(checks)
        now = self._clock()
        logs = [(check, self._log(check, now)) for check in checks]
        allowed = all(len(log.times) < check.limit.count for check, log in logs)
        if allowed:
            for _, log in logs:
                log.times.append(now)
        usage = [_memory_usage(log, check.limit.count, now) for check, log in logs]
        for check, log in logs:
            if not log.times:
                del self._logs[check.key]
        self._maybe_sweep(now)
        return _decide(checks, usage, allowed)

    async def close(self) -> None:
        return None

    @property
    def tracked_keys(self) -> int:
        """Keys with entries held, expired ones not yet swept included (a gauge)."""
        return len(self._logs)

    def _log(self, check: LimitCheck, now: float) -> _Log:
        log = self._logs.get(check.key)
        if log is None:
            log = self._logs[check.key] = _Log(check.limit.window)
        log.window = check.limit.window  # a changed limit applies from now on
        log.purge(now)
        return log

    def _maybe_sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep < len(self._logs) + 64:  # amortized O(1) per decision
            return
        self._since_sweep = 0
        for key, log in list(self._logs.items()):
            log.purge(now)
            if not log.times:
                del self._logs[key]


def _memory_usage(log: _Log, count: int, now: float) -> _Usage:
    used = len(log.times)
    if not used:
        return _Usage(0, 0.0)
    return _Usage(used, log.times[_freeing_index(used, count)] + log.window - now)


# --- Redis --------------------------------------------------------------------------------------

# Lua shared by every script that decides limits (this store's, and the idempotency store's
# claim, which decides a keyed order's limits in the same script). ``check_limits`` purges each
# zset and says whether any is full; ``settle_limits`` counts an admitted request in each and
# appends, per check, its use and when its freeing entry expires. Times are server microseconds
# (integers: a Lua number in a reply is truncated). ``args`` holds count, window per check.
LIMITS_LUA = """
local function server_micros()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function check_limits(keys, args, now)
  local used, full = {}, false
  for i, key in ipairs(keys) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(args[2 * i]))
    used[i] = redis.call('ZCARD', key)
    if used[i] >= tonumber(args[2 * i - 1]) then full = true end
  end
  return used, full
end
local function settle_limits(keys, args, now, member, used, full, reply)
  for i, key in ipairs(keys) do
    local count, window = tonumber(args[2 * i - 1]), tonumber(args[2 * i])
    if not full then
      redis.call('ZADD', key, now, member)
      redis.call('PEXPIRE', key, math.ceil(window / 1000))
      used[i] = used[i] + 1
    end
    local at = math.max(0, used[i] - count)
    local entry = redis.call('ZRANGE', key, at, at, 'WITHSCORES')
    reply[#reply + 1] = used[i]
    reply[#reply + 1] = entry[2] and (tonumber(entry[2]) + window) or now
  end
  return reply
end
"""

# KEYS[i]: check i's zset. ARGV[1]: a member unique to this request, then count and window
# (microseconds) per check. Returns {admitted, now, then per check: used, frees_at}.
_ACQUIRE = LIMITS_LUA + """
local args = {}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local now = server_micros()
local used, full = check_limits(KEYS, args, now)
return settle_limits(KEYS, args, now, ARGV[1], used, full, {full and 0 or 1, now})
"""


class RedisRateLimitStore:
    """Limits shared through Redis by every replica (layout: the module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)

    async def acquire(self, checks: Sequence[LimitCheck]) -> Decision:
        _validate(checks)
        with _unavailable():
            reply = await self._acquire(keys=redis_limit_keys(self._prefix, checks),
                                        args=[limit_member(), *redis_limit_args(checks)])
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
            raise _unexpected()
        return decision_of_reply(checks, reply[1:], allowed=bool(reply[0]))

    async def close(self) -> None:
        return None  # the client belongs to whoever built it


def redis_limit_keys(prefix: str, checks: Sequence[LimitCheck]) -> list[str]:
    """The zsets of ``checks`` under the store prefix ``prefix`` (what ``LIMITS_LUA`` takes)."""
    return [f"{prefix}{_KEYS}{check.key}" for check in checks]


def redis_limit_args(checks: Sequence[LimitCheck]) -> list[int]:
    """Count and window (microseconds) per check, as ``LIMITS_LUA``'s ``args``."""
    args: list[int] = []
    for check in checks:
        args += [check.limit.count, max(1, round(check.limit.window * _MICROS))]
    return args


def limit_member() -> str:
    """A zset member unique to one request."""
    return secrets.token_hex(_MEMBER_BYTES)


def decision_of_reply(checks: Sequence[LimitCheck], reply: Sequence[object], *,
                      allowed: bool) -> Decision:
    """The decision of ``settle_limits``'s reply: ``now``, then use and frees_at per check."""
    numbers = [item for item in reply if isinstance(item, int)]
    if len(numbers) != len(reply) or len(numbers) != 1 + 2 * len(checks):
        raise _unexpected()
    now, *rest = numbers
    usage = [_Usage(used, (frees_at - now) / _MICROS)
             for used, frees_at in zip(rest[::2], rest[1::2], strict=True)]
    return _decide(checks, usage, allowed)


def _unexpected() -> StoreUnavailable:
    return StoreUnavailable("the rate-limit store (Redis) answered with an unexpected reply",
                            code=_CODE)


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the rate-limit store (Redis) is unavailable", _CODE)
