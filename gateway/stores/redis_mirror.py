"""Keeping a store's local mirror of Redis in step: the sync machinery the mirrored stores share.

Owns ``RedisMirror``: a background task that polls the store's version counter every
``interval`` and, when it moved (or every ``_FULL_RELOAD_INTERVAL`` regardless), has the store
reload its snapshot; backoff while Redis fails; an outage logged once, when it starts;
``healthy`` (for ``/readyz``); the lock that orders reloads and the store's own changes as Redis
ordered them; and running change scripts, each of which bumps the version and returns it. Used by
``gateway.stores.revocation`` and ``gateway.stores.kill_switch_redis``.

This module does not know what is mirrored: each store loads and applies its snapshot (``load``),
tidies between reloads (``tidy``), decodes its scripts' replies and documents its Redis layout.
It does not own the Redis client (whoever built it closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from gateway.errors import StoreUnavailable
from gateway.stores.redis_client import REDIS_ERRORS

_MAX_BACKOFF = 1.0
# A full reload now and then, even when the version looks unchanged: covers a Redis that lost its
# data and counted back up to the same version between two polls, or an entry edited by hand.
_FULL_RELOAD_INTERVAL = 30.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class MirrorLabels:
    """How a mirrored store names itself in its logs, its sync task and its errors."""

    logger: logging.Logger  # the store's own, so its log settings keep applying
    name: str  # e.g. "revocation store"
    held: str  # what it keeps serving through an outage, e.g. "revocations"
    task: str  # the sync task's name
    code: str | None = None  # of the StoreUnavailable a failed change raises; None: the default


class RedisMirror:
    """Keeps one store's local state in step with Redis; the store supplies the hooks.

    ``load`` reads a snapshot, replaces the local state with it and returns its version;
    ``tidy`` (optional) runs when a poll finds the version unchanged. Both may raise Redis
    errors (``ResponseError`` for a reply they cannot read): the sync then keeps the last state,
    reports ``healthy`` False and retries with backoff (at most ``max(interval, 1 s)`` apart).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        keys: Sequence[str],
        version_key: str,
        scripts: Mapping[str, str],
        interval: float,
        load: Callable[[], Awaitable[int]],
        tidy: Callable[[], Awaitable[None]] | None = None,
        labels: MirrorLabels,
    ) -> None:
        self._client = client
        self._keys = list(keys)  # every script's KEYS
        self._version_key = version_key
        self._scripts = {name: client.register_script(text) for name, text in scripts.items()}
        self._interval = interval
        self._load, self._tidy, self._labels = load, tidy, labels
        self._version = -1  # unknown: the first sync loads
        self._reload_due = 0.0  # event-loop time of the next unconditional reload
        self.lock = asyncio.Lock()  # orders reloads and local changes as Redis ordered them
        self._healthy = False
        self._outage = False  # an outage is logged once, when it starts
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def start(self) -> None:
        """Load once (not raising if Redis is unreachable) and start the sync task."""
        if self._task is not None:
            return
        self._closing = False
        await self._sync_step(self._interval)
        self._task = asyncio.create_task(self._sync_loop(), name=self._labels.task)
        self._task.add_done_callback(self._sync_ended)

    async def close(self) -> None:
        """Stop the sync task; the local state stays as it is."""
        task, self._task = self._task, None
        if task is None:
            return
        # On Python 3.11 a cancellation landing as a redis-py reply arrives can be swallowed
        # (asyncio.wait_for inside redis-py returns the reply instead): the loop then stops at
        # its next check of ``_closing``, so this wait still ends.
        self._closing = True
        task.cancel()
        await asyncio.wait([task])

    async def change(
        self, script: str, args: Sequence[str], reply: Callable[[object], tuple[int, _T]]
    ) -> _T:
        """Run the change ``script`` (the caller holds ``lock`` and then updates its state).

        ``reply`` splits the script's reply into the version it left and what the caller wants
        of the rest (raising ``ResponseError`` if it cannot). Raises ``StoreUnavailable``.
        """
        try:
            version, result = reply(await self.run(script, args))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            raise StoreUnavailable(f"the {self._labels.name} (Redis) is unavailable",
                                   code=self._labels.code) from exc
        if version == self._version + 1:  # nobody else changed it: no reload needed
            self._version = version
        return result

    async def run(self, script: str, args: Sequence[str] = ()) -> object:
        """Run ``script`` on the store's keys: its raw reply; Redis errors pass through."""
        call: AsyncScript = self._scripts[script]
        return await call(keys=self._keys, args=list(args))

    async def _sync_loop(self) -> None:
        delay = self._interval
        while not self._closing:
            await asyncio.sleep(delay)
            delay = await self._sync_step(delay)

    async def _sync_step(self, delay: float) -> float:
        """One sync; returns how long to wait before the next one."""
        try:
            async with self.lock:
                await self._sync_once()
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return min(delay * 2, max(self._interval, _MAX_BACKOFF))
        self._recovered()
        return self._interval

    async def _sync_once(self) -> None:
        raw = await self._client.get(self._version_key)
        loop = asyncio.get_running_loop()
        if loop.time() >= self._reload_due or as_version(raw or 0) != self._version:
            self._version = await self._load()
            self._reload_due = loop.time() + _FULL_RELOAD_INTERVAL
        elif self._tidy is not None:
            await self._tidy()

    def _failed(self, exc: BaseException) -> None:
        labels = self._labels
        if not self._outage:
            labels.logger.warning(
                "%s: Redis unreachable or unreadable (%s: %s); serving the last known %s and "
                "retrying", labels.name, type(exc).__name__, exc, labels.held)
        self._outage, self._healthy = True, False

    def _recovered(self) -> None:
        if self._outage:
            self._labels.logger.info("%s: Redis reachable again, in step", self._labels.name)
        self._outage, self._healthy = False, True

    def _sync_ended(self, task: asyncio.Task[None]) -> None:
        # Only a bug ends the loop early; say so, and stop claiming to be in step.
        if not task.cancelled() and task.exception() is not None:
            self._labels.logger.error("%s: sync stopped", self._labels.name,
                                      exc_info=task.exception())
            self._healthy = False


def as_version(reply: object) -> int:
    """A version counter (or any integer) from a Redis reply; ``ResponseError`` otherwise."""
    with contextlib.suppress(ValueError):
        if isinstance(reply, int | bytes | str):
            return int(reply)
    raise ResponseError(f"expected an integer reply from Redis, not {reply!r:.40}")
