"""Failed sign-ins per key (a client id, a source address), and until when each key must wait.

Owns the ``LoginFailureStore`` protocol and two implementations: ``MemoryLoginFailureStore``
(one process; bounded) and ``RedisLoginFailureStore`` (shared by every replica, so several
replicas do not multiply a guesser's budget). The policy (``gateway.core.backoff``) decides the
waits; this module only keeps the counts.

Redis layout: ``{prefix}login:{key}`` hash ``failures``, ``blocked_until`` (the Redis server's
time, in ms), ``PEXPIRE``d ``forget_after`` after each failure. One Lua script per failure, so
concurrent failures on several replicas all count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio

from gateway.core.backoff import BackoffPolicy
from gateway.stores.redis_client import milliseconds, translating_errors

_CODE = "login_throttle_unavailable"
MEMORY_KEYS = 100_000  # an address spray cannot grow one process's table past this


class LoginFailureStore(Protocol):
    async def wait(self, keys: Sequence[str]) -> float:
        """Seconds the longest-waiting of ``keys`` must still wait (0: none waits)."""
        ...

    async def failed(self, keys: Sequence[str]) -> None:
        """Count a failure against each of ``keys``."""
        ...

    async def forget(self, key: str) -> None:
        """A success: ``key`` starts afresh."""
        ...


class MemoryLoginFailureStore:
    def __init__(self, policy: BackoffPolicy, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MEMORY_KEYS) -> None:
        self._policy = policy
        self._clock = clock
        self._max_keys = max_keys
        # key -> (failures, blocked until, forgotten after); oldest failure first.
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    async def wait(self, keys: Sequence[str]) -> float:
        now = self._clock()
        waits = [self._live(key, now)[1] - now for key in keys]
        return max([0.0, *waits])

    async def failed(self, keys: Sequence[str]) -> None:
        now = self._clock()
        for key in keys:
            failures = self._live(key, now)[0] + 1
            self._entries[key] = (failures, now + self._policy.delay(failures),
                                  now + self._policy.forget_after)
            self._entries.move_to_end(key)
        while len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)

    async def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def _live(self, key: str, now: float) -> tuple[int, float]:
        entry = self._entries.get(key)
        if entry is None or entry[2] <= now:
            self._entries.pop(key, None)
            return 0, now
        return entry[0], entry[1]


_FAILED = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local free, base, cap, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
for _, key in ipairs(KEYS) do
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  local delay = 0
  if failures > free then delay = math.min(cap, base * 2 ^ math.min(failures - free - 1, 64)) end
  redis.call('HSET', key, 'blocked_until', now_ms + math.floor(delay))
  redis.call('PEXPIRE', key, forget)
end
return 1
"""

_WAIT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local longest = 0
for _, key in ipairs(KEYS) do
  local blocked = tonumber(redis.call('HGET', key, 'blocked_until') or '0')
  if blocked - now_ms > longest then longest = blocked - now_ms end
end
return longest
"""


class RedisLoginFailureStore:
    """Counts shared by every replica (layout: the module docstring); the server's clock rules."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str, policy: BackoffPolicy) -> None:
        self._client = client
        self._prefix = f"{prefix}login:"
        self._args = [policy.free_failures, milliseconds(policy.base_delay),
                      milliseconds(policy.max_delay), milliseconds(policy.forget_after)]
        self._failed = client.register_script(_FAILED)
        self._wait = client.register_script(_WAIT)

    async def wait(self, keys: Sequence[str]) -> float:
        with translating_errors("the sign-in throttle (Redis)", _CODE):
            waited = await self._wait(keys=[self._prefix + key for key in keys])
        return int(waited) / 1000

    async def failed(self, keys: Sequence[str]) -> None:
        with translating_errors("the sign-in throttle (Redis)", _CODE):
            await self._failed(keys=[self._prefix + key for key in keys], args=self._args)

    async def forget(self, key: str) -> None:
        with translating_errors("the sign-in throttle (Redis)", _CODE):
            await self._client.delete(self._prefix + key)
