"""Token revocation: by token id (``jti``) or by user ("every token of this user issued before T").

Owns the ``RevocationStore`` protocol and its two implementations: ``MemoryRevocationStore`` (the
single-process embedded default) and ``RedisRevocationStore`` (shared by every replica). The check,
``is_revoked``, runs on every request: it is synchronous, O(1) and does no I/O. The Redis store
therefore answers from a local mirror that a background task (``gateway.stores.redis_mirror``)
keeps in step with Redis, polling a version counter every ``sync_interval``: every replica refuses
a revoked token within one second without pub/sub. Entries are forgotten once the tokens they
name would have expired anyway.

Redis layout (every change is one Lua script, atomic with its version bump):

- ``{prefix}revoked:tokens``            zset: member jti, score the token's ``exp``
- ``{prefix}revoked:users``             zset: member subject, score ``before`` (only moves forward)
- ``{prefix}revoked:users:keep_until``  zset: member subject, score when it may be forgotten
- ``{prefix}revoked:version``           integer, INCRemented by every revocation

Expired entries are purged with ZREMRANGEBYSCORE inside the same scripts (purges change nothing a
check can see, so they do not bump the version). This module does not verify tokens, decide what
``before``/``keep_until`` are, or own the Redis client (whoever built it closes it).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import redis.asyncio
from redis.exceptions import ResponseError

from gateway.stores.redis_mirror import MirrorLabels, RedisMirror, as_version

logger = logging.getLogger(__name__)
_LABELS = MirrorLabels(logger, name="revocation store", held="revocations", task="revocation-sync")

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch: the scale of a token's ``iat`` and ``exp``."""


class RevocationStore(Protocol):
    async def start(self) -> None:
        """Load the state and start keeping it in step (no-op for memory)."""

    async def close(self) -> None:
        """Stop syncing; the state stays readable."""

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        """Refuse token ``token_id`` until ``expires_at``. Raises ``StoreUnavailable``."""

    async def revoke_user(self, subject: str, before: float, keep_until: float) -> None:
        """Refuse every token of ``subject`` issued (``iat``) strictly before ``before``.

        ``keep_until`` is when the longest-lived such token expires: the entry may be forgotten
        after it. A later ``before`` moves the cutoff forward; an earlier one never moves it back.
        Raises ``StoreUnavailable``.
        """

    def is_revoked(self, token_id: str, subject: str, issued_at: float) -> bool:
        """Synchronous and O(1), no I/O: called on every request."""

    @property
    def healthy(self) -> bool:
        """False while the shared state cannot be reached (for ``/readyz``)."""


class _Mirror:
    """Revocations held in process: O(1) checks; a heap forgets entries in expiry order."""

    __slots__ = ("_heap", "tokens", "users")

    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}  # jti -> exp
        self.users: dict[str, tuple[float, float]] = {}  # subject -> (before, keep_until)
        self._heap: list[tuple[float, bool, str]] = []  # (expiry, is_user, key); may be stale

    def __len__(self) -> int:
        return len(self.tokens) + len(self.users)

    def add_token(self, token_id: str, expires_at: float) -> None:
        expires_at = max(expires_at, self.tokens.get(token_id, expires_at))
        self.tokens[token_id] = expires_at
        self._push(expires_at, False, token_id)

    def add_user(self, subject: str, before: float, keep_until: float) -> None:
        old_before, old_keep = self.users.get(subject, (before, keep_until))
        entry = (max(before, old_before), max(keep_until, old_keep))
        self.users[subject] = entry
        self._push(entry[1], True, subject)

    def is_revoked(self, token_id: str, subject: str, issued_at: float, now: float) -> bool:
        expires_at = self.tokens.get(token_id)
        if expires_at is not None and expires_at > now:
            return True
        entry = self.users.get(subject)
        return entry is not None and issued_at < entry[0] and entry[1] > now

    def next_expiry(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def purge(self, now: float) -> None:
        """Forget every entry whose expiry is at or before ``now``."""
        while self._heap and self._heap[0][0] <= now:
            _, is_user, key = heapq.heappop(self._heap)
            if is_user and key in self.users and self.users[key][1] <= now:
                del self.users[key]
            elif not is_user and key in self.tokens and self.tokens[key] <= now:
                del self.tokens[key]

    def _push(self, expiry: float, is_user: bool, key: str) -> None:
        heapq.heappush(self._heap, (expiry, is_user, key))
        if len(self._heap) > 2 * len(self) + 64:  # repeated revocations left stale entries
            self._heap = [(exp, False, key) for key, exp in self.tokens.items()]
            self._heap += [(keep, True, key) for key, (_, keep) in self.users.items()]
            heapq.heapify(self._heap)


class MemoryRevocationStore:
    """The single-process store: what this process revoked, forgotten as it expires."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._mirror = _Mirror()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        self._mirror.add_token(token_id, expires_at)
        self._mirror.purge(self._clock())

    async def revoke_user(self, subject: str, before: float, keep_until: float) -> None:
        self._mirror.add_user(subject, before, keep_until)
        self._mirror.purge(self._clock())

    def is_revoked(self, token_id: str, subject: str, issued_at: float) -> bool:
        return self._mirror.is_revoked(token_id, subject, issued_at, self._clock())

    @property
    def healthy(self) -> bool:
        return True

    @property
    def entries(self) -> int:
        """Revocations held (a gauge)."""
        return len(self._mirror)


# KEYS: tokens, users, users:keep_until, version. ARGV[1]: now.
_PURGE = """
local function purge(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for i = 1, #gone, 500 do
    redis.call('ZREM', KEYS[2], unpack(gone, i, math.min(i + 499, #gone)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
"""
_PURGE_ONLY = _PURGE + "purge(ARGV[1])\nreturn 0\n"
# ARGV: now, jti, exp. ZADD GT keeps the later expiry when a jti is revoked twice.
_REVOKE_TOKEN = _PURGE + """
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[2])
purge(ARGV[1])
return redis.call('INCR', KEYS[4])
"""
# ARGV: now, subject, before, keep_until. GT: the cutoff and its lifetime only move forward.
_REVOKE_USER = _PURGE + """
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], 'GT', ARGV[4], ARGV[2])
purge(ARGV[1])
return redis.call('INCR', KEYS[4])
"""
_SNAPSHOT = _PURGE + """
purge(ARGV[1])
return {redis.call('GET', KEYS[4]) or '0',
        redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
        redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')}
"""


class RedisRevocationStore:
    """Revocations shared through Redis, checked against a local mirror kept in step.

    ``start`` loads the mirror and starts the sync task; if Redis cannot be reached then, it
    logs, reports ``healthy`` False and keeps retrying (it does not raise). Sync failures keep
    the last mirror and retry with backoff (at most ``max(sync_interval, 1 s)`` apart); a
    revocation that cannot reach Redis raises ``StoreUnavailable`` and changes nothing locally.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        clock: Clock = time.time,
        sync_interval: float = 0.25,
    ) -> None:
        if sync_interval <= 0:
            raise ValueError("sync_interval must be positive")
        names = ("tokens", "users", "users:keep_until", "version")
        keys = [f"{prefix}revoked:{name}" for name in names]
        self._clock = clock
        self._mirror = _Mirror()
        self._sync = RedisMirror(
            client, keys=keys, version_key=keys[3], interval=sync_interval,
            scripts={"purge": _PURGE_ONLY, "token": _REVOKE_TOKEN, "user": _REVOKE_USER,
                     "snapshot": _SNAPSHOT},
            load=self._load, tidy=self._tidy, labels=_LABELS)

    async def start(self) -> None:
        await self._sync.start()

    async def close(self) -> None:
        await self._sync.close()

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        async with self._sync.lock:
            now = self._clock()
            await self._sync.change("token", _args(now, token_id, expires_at), _version_only)
            self._mirror.add_token(token_id, expires_at)
            self._mirror.purge(now)

    async def revoke_user(self, subject: str, before: float, keep_until: float) -> None:
        async with self._sync.lock:
            now = self._clock()
            args = _args(now, subject, before, keep_until)
            await self._sync.change("user", args, _version_only)
            self._mirror.add_user(subject, before, keep_until)
            self._mirror.purge(now)

    def is_revoked(self, token_id: str, subject: str, issued_at: float) -> bool:
        return self._mirror.is_revoked(token_id, subject, issued_at, self._clock())

    @property
    def healthy(self) -> bool:
        return self._sync.healthy

    @property
    def entries(self) -> int:
        """Revocations held in the local mirror (a gauge)."""
        return len(self._mirror)

    async def _load(self) -> int:
        now = self._clock()
        version, tokens, users, keeps = _snapshot(await self._sync.run("snapshot", _args(now)))
        mirror = _Mirror()
        for token_id, expires_at in _pairs(tokens):
            mirror.add_token(token_id.decode(), float(expires_at))
        keep_until = dict(_pairs(keeps))
        for subject, before in _pairs(users):
            mirror.add_user(subject.decode(), float(before), float(keep_until.get(subject, now)))
        mirror.purge(now)
        self._mirror = mirror
        return version

    async def _tidy(self) -> None:
        now = self._clock()
        next_expiry = self._mirror.next_expiry()
        if next_expiry is not None and next_expiry <= now:
            await self._sync.run("purge", _args(now))
            self._mirror.purge(now)


def _args(now: float, *values: str | float) -> list[str]:
    """A script's ARGV: ``now`` first; numbers as ``repr`` (exact, and what Lua reads)."""
    return [value if isinstance(value, str) else repr(float(value)) for value in (now, *values)]


def _version_only(reply: object) -> tuple[int, None]:
    return as_version(reply), None


def _snapshot(reply: object) -> tuple[int, list[bytes], list[bytes], list[bytes]]:
    if not isinstance(reply, list) or len(reply) != 4:
        raise ResponseError("unexpected reply from the revocation snapshot script")
    version, tokens, users, keeps = reply
    return as_version(version), tokens, users, keeps


def _pairs(flat: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
    return zip(flat[::2], flat[1::2], strict=True)
