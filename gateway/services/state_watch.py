"""The background check that notices Redis losing the shared state, every ``interval`` seconds.

Owns the task that feeds ``ClusterState`` what Redis shows (``ClusterEpochStore``): until this
process knows an epoch (or a loss) it *claims* one (made when Redis holds neither an epoch nor a
reported loss), then each check reads the epoch, the chain head and any reported loss together.
A replica that finds the state lost reports it in Redis (so every replica, and any that starts
now, stops too) and raises the report when it knows a newer head. A loss is logged once, as an
error; joining an acknowledged epoch after one, as a warning. A Redis that does not answer is an
outage, not a loss: the last state is kept and the check retried (logged once).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.core.cluster_state import ACKNOWLEDGE_HINT, Change, ClusterState, EpochView
from gateway.errors import StoreUnavailable
from gateway.stores.cluster_epoch import ClusterEpochStore

logger = logging.getLogger(__name__)


class StateWatch:
    def __init__(self, store: ClusterEpochStore, state: ClusterState, interval: float) -> None:
        if not 0 < interval <= 1:
            raise ValueError("the state check interval must be over 0 and at most 1 s")
        self._store, self._state, self._interval = store, state, interval
        self._task: asyncio.Task[None] | None = None
        self._outage = False
        self._announced = False  # the current loss was logged
        self._closing = False

    async def start(self) -> None:
        """Check once (not raising when Redis does not answer), then every ``interval``."""
        await self.check()
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="state-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        # redis-py may swallow a cancellation that lands as a reply arrives (Python 3.11): the
        # loop also stops at its next look at ``_closing``.
        self._closing = True
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def check(self) -> None:
        """One comparison of Redis with this replica's memory."""
        state = self._state
        try:
            asked = state.stamp()
            view, made = await self._read()
            if state.observe(view, asked) is Change.JOINED and not self._announced:
                logger.info("state watch: %s the cluster epoch %s (audit chain head seq %d)",
                            "made" if made else "joined", view.epoch, view.head.seq)
            report = state.report(view)
            if report is not None:
                await self._store.report(view.epoch, report)
        except StoreUnavailable as exc:
            if not self._outage:
                logger.warning("state watch: %s; keeping the last known state", exc)
            self._outage = True
        else:
            if self._outage:
                logger.info("state watch: Redis answers again")
            self._outage = False
        self._announce()

    async def _read(self) -> tuple[EpochView, bool]:
        """What Redis shows, claiming the epoch until this process knows one; whether the
        claim made it."""
        state = self._state
        if state.epoch is not None or state.loss is not None:
            return await self._store.view(), False
        return await self._store.claim()

    def _announce(self) -> None:
        """A loss (whichever path found it: this check or a refused append) is logged once."""
        loss = self._state.loss
        if loss is not None and not self._announced:
            logger.error("state lost: %s; the replicas knew the audit chain up to seq %d "
                         "(hash %s); %s", loss.reason, loss.head.seq, loss.head.hash,
                         ACKNOWLEDGE_HINT)
        elif loss is None and self._announced:
            logger.warning("state watch: joined the acknowledged cluster epoch %s (audit chain "
                           "head seq %d); order calls resume", self._state.epoch,
                           self._state.head.seq)
        self._announced = loss is not None

    async def _loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._interval)
            await self.check()
