"""The market-data cache's shared level: upstream responses kept for a while, and refresh locks.

Owns the ``MarketCacheStore`` protocol, the ``CachedResponse`` it holds, and two implementations:
``MemoryMarketCacheStore`` (the single-process embedded default) and ``RedisMarketCacheStore``
(shared by every replica). A value is kept physically for ``retain_for`` seconds (the caller's
fresh TTL plus its stale allowance) and then forgotten; a lock is the right to refresh one key,
held by a random token until it is released or ``hold_for`` runs out.

This module does not decide what is fresh or stale (that is ``stored_at`` against the caller's
TTL, in ``gateway.services.market_data``), never looks inside a body (the upstream's bytes are
kept unchanged) and treats keys as opaque. It does not own the Redis client: whoever built it
closes it.

Redis layout (one round trip per operation):

- ``{prefix}cache:{key}``       string: ``mc1\\n<stored_at>\\n<content_type>\\n`` then the raw body;
                                ``SET … PX retain_for``
- ``{prefix}cache-lock:{key}``  string: the holder's token; ``SET NX PX hold_for``, released by a
                                compare-and-delete script
"""

from __future__ import annotations

import heapq
import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import redis.asyncio

from gateway.stores.redis_client import milliseconds, translating_errors

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds on any steady scale: the memory store only measures how long entries have lived."""

_MAGIC = b"mc1"  # names the framing, so a future change is read as a miss, never as garbage
_TOKEN_BYTES = 16
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class CachedResponse:
    body: bytes  # the upstream's bytes, unchanged
    content_type: str
    stored_at: float  # wall-clock seconds when it was fetched from the exchange


class MarketCacheStore(Protocol):
    async def get(self, key: str) -> CachedResponse | None:
        """The value under ``key``, or None once it was forgotten. Raises ``StoreUnavailable``."""

    async def put(self, key: str, value: CachedResponse, retain_for: float) -> None:
        """Keep ``value`` for ``retain_for`` seconds (replacing any older one), then forget it.

        Raises ``ValueError`` for a ``retain_for`` that is not a positive finite number or a
        content type holding a line break; ``StoreUnavailable``.
        """

    async def try_lock(self, key: str, hold_for: float) -> str | None:
        """The right to refresh ``key``: a random token if nobody holds it, else None.

        The lock expires by itself after ``hold_for`` seconds. Raises ``StoreUnavailable``.
        """

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock on ``key`` only if ``token`` still holds it. Raises
        ``StoreUnavailable``."""

    async def close(self) -> None:
        """Release what the store holds itself (never the Redis client it was given)."""


def _check_put(value: CachedResponse, retain_for: float) -> None:
    _check_duration("retain_for", retain_for)
    if "\n" in value.content_type or "\r" in value.content_type:
        raise ValueError("a content type cannot hold a line break")


def _check_duration(name: str, seconds: float) -> None:
    if not 0 < seconds < math.inf:
        raise ValueError(f"{name} must be a positive finite number of seconds, not {seconds!r}")


def _new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


# --- memory ------------------------------------------------------------------------------------


class _Expiring(Generic[_V]):
    """A dict whose entries expire: O(1) reads; a heap forgets entries in expiry order."""

    __slots__ = ("_heap", "_items")

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, _V]] = {}  # key -> (expires_at, value)
        self._heap: list[tuple[float, str]] = []  # (expires_at, key); may be stale

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> _V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= now:  # forgotten on access, without waiting for a sweep
            del self._items[key]
            return None
        return item[1]

    def set(self, key: str, value: _V, expires_at: float, now: float) -> None:
        self.purge(now)  # every write sweeps what has expired: the size stays bounded
        self._items[key] = (expires_at, value)
        heapq.heappush(self._heap, (expires_at, key))
        if len(self._heap) > 2 * len(self._items) + 64:  # rewrites of one key left stale entries
            self._heap = [(expires_at, key) for key, (expires_at, _) in self._items.items()]
            heapq.heapify(self._heap)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def purge(self, now: float) -> None:
        """Forget every entry whose expiry is at or before ``now``."""
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            item = self._items.get(key)
            if item is not None and item[0] <= now:
                del self._items[key]


class MemoryMarketCacheStore:
    """The single-process store: values and locks in dicts, each entry with its expiry."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._values: _Expiring[CachedResponse] = _Expiring()
        self._locks: _Expiring[str] = _Expiring()

    async def get(self, key: str) -> CachedResponse | None:
        return self._values.get(key, self._clock())

    async def put(self, key: str, value: CachedResponse, retain_for: float) -> None:
        _check_put(value, retain_for)
        now = self._clock()
        self._values.set(key, value, now + retain_for, now)

    async def try_lock(self, key: str, hold_for: float) -> str | None:
        _check_duration("hold_for", hold_for)
        now = self._clock()
        if self._locks.get(key, now) is not None:
            return None
        token = _new_token()
        self._locks.set(key, token, now + hold_for, now)
        return token

    async def unlock(self, key: str, token: str) -> None:
        if self._locks.get(key, self._clock()) == token:
            self._locks.pop(key)

    async def close(self) -> None:
        return None

    @property
    def entries(self) -> int:
        """Values held, expired ones not yet swept included (a gauge)."""
        return len(self._values)


# --- Redis -------------------------------------------------------------------------------------

# KEYS[1]: the lock. ARGV[1]: the token that must still hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisMarketCacheStore:
    """Values and locks shared through Redis by every replica (layout: the module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._client = client
        self._values = f"{prefix}cache:"
        self._locks = f"{prefix}cache-lock:"
        self._unlock = client.register_script(_UNLOCK)

    async def get(self, key: str) -> CachedResponse | None:
        with _unavailable():
            raw = await self._client.get(self._values + key)
        if raw is None:
            return None
        value = decode_value(raw)
        if value is None:  # another framing (a rolling upgrade) or a hand edit: refetch it
            logger.warning("market cache: unreadable value under %r, treated as a miss", key)
        return value

    async def put(self, key: str, value: CachedResponse, retain_for: float) -> None:
        _check_put(value, retain_for)
        raw, px = encode_value(value), milliseconds(retain_for)
        with _unavailable():
            await self._client.set(self._values + key, raw, px=px)

    async def try_lock(self, key: str, hold_for: float) -> str | None:
        _check_duration("hold_for", hold_for)
        token = _new_token()
        with _unavailable():
            acquired = await self._client.set(self._locks + key, token, nx=True,
                                              px=milliseconds(hold_for))
        return token if acquired else None

    async def unlock(self, key: str, token: str) -> None:
        with _unavailable():
            await self._unlock(keys=[self._locks + key], args=[token])

    async def close(self) -> None:
        return None  # the client belongs to whoever built it


def encode_value(value: CachedResponse) -> bytes:
    """``mc1\\n<stored_at>\\n<content_type>\\n<body>``: the body is appended, never re-encoded."""
    header = f"{value.stored_at!r}\n{value.content_type}\n".encode()
    return b"".join((_MAGIC, b"\n", header, value.body))


def decode_value(raw: object) -> CachedResponse | None:
    """The value ``encode_value`` framed, or None when ``raw`` is not such a frame."""
    if not isinstance(raw, bytes):
        return None
    parts = raw.split(b"\n", 3)
    if len(parts) != 4 or parts[0] != _MAGIC:
        return None
    try:
        stored_at, content_type = float(parts[1]), parts[2].decode()
    except ValueError:  # UnicodeDecodeError included
        return None
    return CachedResponse(body=parts[3], content_type=content_type, stored_at=stored_at)


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the market cache (Redis) is unavailable")
