"""Writes that must not be lost when their store is down: tried at once, else spooled and retried.

A ``WriteSpool`` takes items and the one function that writes an item. ``put`` writes now; when
the store raises ``StoreUnavailable`` the item goes into an in-process FIFO that a background
task retries every ``retry_interval`` until written. While the spool holds anything, new items
queue behind it, so the store sees them in the order they came (the audit chain depends on it).
A full spool drops the item with an error log naming it and counts it (``dropped``); ``close``
tries to write what is left for up to ``flush_timeout`` seconds and names what is lost.

Used for the audit trail's records and for the order desk's settlements (an idempotency key's
result, a new order's owner), so that "the store was down for a second" never erases either.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.errors import StoreUnavailable

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class WriteSpool(Generic[Item]):
    def __init__(
        self, name: str, write: Callable[[Item], Awaitable[object]],
        describe: Callable[[Item], str], *, limit: int, retry_interval: float,
        flush_timeout: float = 5.0, noun: str = "writes",
    ) -> None:
        self._name = name
        self._noun = noun
        self._write = write
        self._describe = describe
        self._spool: deque[Item] = deque()
        self._limit = limit
        self._interval = retry_interval
        self._flush_timeout = flush_timeout
        self._dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._delivering: set[asyncio.Task[None]] = set()

    @property
    def spooled(self) -> int:
        return len(self._spool)

    @property
    def dropped(self) -> int:
        return self._dropped

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._retry_loop(), name=f"{self._name}-spool")

    async def close(self) -> None:
        """Stop retrying, then try to write the spool for up to ``flush_timeout`` seconds."""
        task, self._task = self._task, None
        self._closing = True  # redis-py may swallow the cancel: the loop checks this too
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._delivering:
            await asyncio.wait(self._delivering, timeout=self._flush_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_timeout
        while self._spool and loop.time() < deadline:
            if not await self._drain(deadline):
                await asyncio.sleep(min(self._interval, 0.1))
        if self._spool:
            lost = ", ".join(self._describe(item) for item in self._spool)
            logger.error("%s: %d %s could not be written and are lost: %s", self._name,
                         len(self._spool), self._noun, lost)

    async def put(self, item: Item) -> None:
        """Write ``item`` now, or spool it for later; never raises. The write goes on if the
        caller is cancelled (a client that hangs up does not erase what it caused)."""
        if self._spool:
            self._enqueue(item)
            return
        task = asyncio.ensure_future(self._deliver(item))
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)
        await asyncio.shield(task)

    async def _deliver(self, item: Item) -> None:
        try:
            await self._write(item)
        except StoreUnavailable as exc:
            if not self._spool:
                logger.warning("%s: the store is unavailable (%s); spooling in memory and "
                               "retrying", self._name, exc)
            self._enqueue(item)

    def _enqueue(self, item: Item) -> None:
        if len(self._spool) >= self._limit:
            self._dropped += 1
            logger.error("%s: spool full (%d %s); dropped %s", self._name, self._limit,
                         self._noun, self._describe(item))
            return
        self._spool.append(item)
        self._wake.set()

    async def _retry_loop(self) -> None:
        while not self._closing:
            if not self._spool:
                self._wake.clear()
                await self._wake.wait()
            elif not await self._drain(None):
                await asyncio.sleep(self._interval)

    async def _drain(self, deadline: float | None) -> bool:
        """Write the spool in order; False at the first failure (or the deadline)."""
        loop, written = asyncio.get_running_loop(), 0
        while self._spool and (deadline is None or loop.time() < deadline):
            if deadline is None and self._closing:
                return False
            try:
                await self._write(self._spool[0])
            except StoreUnavailable:
                return False
            self._spool.popleft()  # only once stored: newer items stay queued behind it
            written += 1
        if written and not self._spool:
            logger.info("%s: the store is back; %d spooled %s written", self._name, written,
                        self._noun)
        return not self._spool
