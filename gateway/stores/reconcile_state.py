"""What the replicas share to reconcile the order calls of dead replicas: one lock, one cursor.

Owns the ``ReconcileState`` protocol and two implementations. The lock is a lease: the replica
holding it sweeps the audit trail for order calls nobody settled; it renews the lease on each
sweep, and a replica that dies lets it lapse, so another takes over. The cursor is the audit
sequence number before which every order call is settled, so a new holder does not start from
the beginning of the trail.

``MemoryReconcileState`` serves the single process (it always holds the lock).
``RedisReconcileState``:

- ``{prefix}reconcile:lock``    string, the holder's id, ``PX`` the lease
- ``{prefix}reconcile:cursor``  string, a sequence number
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import redis.asyncio

from gateway.stores.redis_client import milliseconds, translating_errors

_CODE = "reconcile_unavailable"

# KEYS[1]: the lock. ARGV: holder, lease ms. Taken when free, renewed when held by ``holder``.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS[1]: the lock. ARGV: holder. Only the holder releases it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ReconcileState(Protocol):
    async def acquire(self, holder: str, lease: float) -> bool:
        """Take the lock, or renew it if ``holder`` has it, for ``lease`` s; False when another
        replica holds it. Raises ``StoreUnavailable``."""

    async def release(self, holder: str) -> None:
        """Give the lock up (only if ``holder`` has it). Raises ``StoreUnavailable``."""

    async def cursor(self) -> int:
        """The sequence number before which every order call is settled (0 at first)."""

    async def set_cursor(self, seq: int) -> None:
        """Move the cursor (never back: a lower ``seq`` is ignored)."""


class MemoryReconcileState:
    def __init__(self) -> None:
        self._cursor = 0

    async def acquire(self, holder: str, lease: float) -> bool:
        return True

    async def release(self, holder: str) -> None:
        return None

    async def cursor(self) -> int:
        return self._cursor

    async def set_cursor(self, seq: int) -> None:
        self._cursor = max(self._cursor, seq)


# KEYS[1]: the cursor. ARGV: seq. Only forward.
_SET_CURSOR = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > seq then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class RedisReconcileState:
    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._client = client
        self._lock = f"{prefix}reconcile:lock"
        self._cursor = f"{prefix}reconcile:cursor"
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._set_cursor = client.register_script(_SET_CURSOR)

    async def acquire(self, holder: str, lease: float) -> bool:
        with _unavailable():
            return bool(await self._acquire(keys=[self._lock],
                                            args=[holder, milliseconds(lease)]))

    async def release(self, holder: str) -> None:
        with _unavailable():
            await self._release(keys=[self._lock], args=[holder])

    async def cursor(self) -> int:
        with _unavailable():
            value = await self._client.get(self._cursor)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0  # an unreadable cursor: sweeping from the start is slow, never wrong

    async def set_cursor(self, seq: int) -> None:
        with _unavailable():
            await self._set_cursor(keys=[self._cursor], args=[seq])


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the reconciler's state (Redis) is unavailable", _CODE)
