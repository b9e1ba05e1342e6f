"""Acknowledging a state loss: the new epoch and the first record of a new audit segment.

Redis lost what the replicas saw (``gateway.core.cluster_state``) and order calls stop until an
admin says so, from ``POST /admin/state-loss/acknowledge`` or ``expie-gateway audit
acknowledge-loss``. The acknowledgement names the last chain head known (the newest of the
reported loss and, on a replica, its own memory) and appends, with a new epoch, one admin record
``state_loss.acknowledge`` that follows that head: the break is in the trail, and
``gateway.core.audit_checkpoint`` explains what ``audit verify`` makes of it. Replicas join the
new epoch at their next check; order calls flow again. What Redis lost besides the audit chain
(idempotency keys, order owners, kill switches, revocations) stays lost: the record says so by
being there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.core.audit_chain import AuditRecord, ChainPoint, Kind, Outcome
from gateway.core.audit_checkpoint import SEGMENT_ACTION, segment_params
from gateway.core.cluster_state import ClusterState, LossReport
from gateway.errors import StateNotLost
from gateway.services.call_context import CallContext, Step, audit_event
from gateway.stores.cluster_epoch import ClusterEpochStore, new_epoch

logger = logging.getLogger(__name__)


async def acknowledge_loss(store: ClusterEpochStore, context: CallContext, reason: str,
                           clock: Callable[[], float],
                           state: ClusterState | None = None) -> AuditRecord:
    """Acknowledge the reported loss (``state``: this replica's memory, joined at once).

    ``StateNotLost`` when nothing is lost, ``RecordsNotExported`` when Redis still holds old
    records no export wrote out, ``StoreUnavailable``."""
    view = await store.view()
    loss = _newest(view.loss, state.loss if state is not None else None)
    if loss is None:
        raise StateNotLost("no state loss is reported: there is nothing to acknowledge")
    follows = loss.head
    in_place = view.head == follows
    epoch = new_epoch()
    params = segment_params(follows, in_place=in_place, lost_epoch=loss.epoch, epoch=epoch,
                            loss=loss.reason, reason=reason)
    event = audit_event(context, Step(Kind.ADMIN, SEGMENT_ACTION, None, params,
                                      outcome=Outcome.ACCEPTED), clock)
    record = await store.acknowledge(event, seen=view, follows=follows, in_place=in_place,
                                     epoch=epoch)
    if state is not None:
        state.join(epoch, ChainPoint(record.seq, record.hash))
    logger.warning("state loss acknowledged (%s): new cluster epoch %s; the audit chain goes on "
                   "at seq %d after seq %d (hash %s)", reason, epoch, record.seq, follows.seq,
                   follows.hash)
    return record


class StateLoss:
    """The acknowledgement as a replica serves it; without Redis there is nothing to lose."""

    def __init__(self, state: ClusterState, store: ClusterEpochStore | None,
                 clock: Callable[[], float]) -> None:
        self._state = state
        self._store = store
        self._clock = clock

    async def acknowledge(self, context: CallContext, reason: str) -> AuditRecord:
        if self._store is None:
            raise StateNotLost("the gateway keeps its state in this process (no redis.url): "
                               "there is no shared state to lose")
        return await acknowledge_loss(self._store, context, reason, self._clock, self._state)


def _newest(*losses: LossReport | None) -> LossReport | None:
    known = [loss for loss in losses if loss is not None]
    return max(known, key=lambda loss: loss.head.seq) if known else None
