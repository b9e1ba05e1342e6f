"""What one replica remembers of the shared state, and when it must call that state lost.

Redis holds a *cluster epoch* (a random id, written when the shared state is first created and
again by each acknowledged loss) beside the audit chain. Each replica keeps the epoch it joined
and the newest chain head it saw or wrote. Redis no longer matching that memory (the epoch gone
or replaced, the head older than one this replica saw) means Redis lost data: it restarted
without persistence, was restored from an old copy, or failed over to a replica that had not
caught up. A replica that sees it, or finds a loss another replica reported in Redis (a
``LossReport``), refuses order calls (``check``) and audit appends (``append_guard``) instead of
carrying on with a new chain, until an admin's acknowledgement writes a new epoch, which it joins.

Pure: no I/O, no clock; ``gateway.services.state_watch`` feeds it what Redis shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.core.audit_chain import START, ChainPoint
from gateway.errors import StateLost, StoreUnavailable

ACKNOWLEDGE_HINT = ("order calls are refused until an admin acknowledges the loss "
                    "(expie-gateway audit acknowledge-loss, or POST /admin/state-loss/acknowledge)")
# The epoch of in-process stores: they last exactly as long as the process, so never lost.
IN_PROCESS = "in-process"


@dataclass(frozen=True, slots=True)
class LossReport:
    """A loss as the replicas that saw it reported it in Redis: the epoch they had joined, the
    newest chain head any of them knew (what an acknowledgement's new segment follows), why."""

    epoch: str
    head: ChainPoint
    reason: str


@dataclass(frozen=True, slots=True)
class EpochView:
    """What Redis shows at one moment: its epoch (None: absent), whether an acknowledgement made
    it, the audit chain head (the anchor when no record is left), and a loss reported there."""

    epoch: str | None
    acknowledged: bool
    head: ChainPoint
    loss: LossReport | None = None


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a replica knew when it asked Redis for a view: replies to its own appends may arrive
    while the view is on its way, so only what it knew before asking can be held against it."""

    generation: int  # joins and losses so far
    head: ChainPoint


class Change(Enum):
    NONE = "none"
    JOINED = "joined"  # the first epoch, or an acknowledged one after a loss
    LOST = "lost"


class ClusterState:
    """This replica's memory of the epoch and the head; the synchronous check of order calls."""

    def __init__(self) -> None:
        self._epoch: str | None = None
        self._known: set[str] = set()  # every epoch this process joined: never joined again
        self._head = START
        self._lost: tuple[str, str] | None = None  # the epoch that was lost, and why
        self._generation = 0  # moves at every join and loss: a view asked for before is stale

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def head(self) -> ChainPoint:
        """The newest chain head this replica saw or wrote (or was told of by a loss report)."""
        return self._head

    @property
    def loss(self) -> LossReport | None:
        """The loss as this replica knows it (with the newest head it knows); None while the
        state is not lost."""
        if self._lost is None:
            return None
        return LossReport(self._lost[0], self._head, self._lost[1])

    @property
    def status(self) -> str:
        """For ``/readyz``: ``ok``, ``lost``, or ``unchecked`` (Redis not asked yet)."""
        if self._lost is not None:
            return "lost"
        return "unchecked" if self._epoch is None else "ok"

    def check(self) -> None:
        """``StateLost`` while the state is lost (the first step of every order call)."""
        if self._lost is not None:
            raise StateLost(f"Redis lost the gateway's shared state ({self._lost[1]}); "
                            f"{ACKNOWLEDGE_HINT}")

    def append_guard(self) -> tuple[str, int]:
        """The epoch an audit append must find in Redis and the lowest head it may follow."""
        self.check()
        if self._epoch is None:
            raise StoreUnavailable("the audit trail waits for the cluster epoch (Redis has not "
                                   "answered since start)", code="audit_unavailable")
        return self._epoch, self._head.seq

    def stamp(self) -> Stamp:
        """Taken just before asking Redis for the view ``observe`` is given."""
        return Stamp(self._generation, self._head)

    def wrote(self, point: ChainPoint) -> None:
        """An append of this replica stored a record at ``point``."""
        if point.seq > self._head.seq:
            self._head = point

    def lose(self, reason: str) -> bool:
        """Call the state lost (an append found it so); True when it was not already."""
        if self._lost is not None:
            return False
        self._lost = (self._epoch or "", reason)
        self._generation += 1
        return True

    def join(self, epoch: str, head: ChainPoint) -> None:
        """Take ``epoch`` and ``head`` as the state from now on, leaving a loss behind."""
        self._epoch, self._head, self._lost = epoch, head, None
        self._known.add(epoch)
        self._generation += 1

    def observe(self, view: EpochView, asked: Stamp) -> Change:
        """Compare what Redis shows (``view``, asked for at ``asked``) with what this replica
        knew then. A view asked for before a join or a loss here says nothing new: ignored."""
        if asked.generation != self._generation:
            return Change.NONE
        if self._lost is None:
            reason = self._loss_in(view, asked.head)
            if reason is not None:
                reported = view.loss
                self._lost = ((reported.epoch, reported.reason) if reported is not None
                              else (self._epoch or "", reason))
                self._generation += 1
                self._take(reported)
                return Change.LOST
        elif view.loss is not None:
            self._take(view.loss)
            return Change.NONE
        if view.epoch is not None and view.epoch != self._epoch:
            if self._lost is not None and not self._resumes(view):
                return Change.NONE
            self.join(view.epoch, view.head)
            return Change.JOINED
        if self._lost is None and view.head.seq > self._head.seq:
            self._head = view.head
        return Change.NONE

    def report(self, view: EpochView) -> LossReport | None:
        """The loss this replica should write into Redis: when lost and Redis holds no report,
        or one naming an older head than this replica knows (acknowledging follows the newest)."""
        loss = self.loss
        if loss is None or (view.loss is not None and view.loss.head.seq >= loss.head.seq):
            return None
        return loss

    def _take(self, report: LossReport | None) -> None:
        """Keep the newest head a loss report names: what an acknowledgement here follows."""
        if report is not None and report.head.seq > self._head.seq:
            self._head = report.head

    def _resumes(self, view: EpochView) -> bool:
        """A lost replica joins only a new acknowledged epoch whose chain is past its memory."""
        return (view.acknowledged and view.epoch not in self._known
                and view.head.seq > self._head.seq)

    def _loss_in(self, view: EpochView, known: ChainPoint) -> str | None:
        if view.loss is not None:
            return view.loss.reason
        if self._epoch is None:
            return None  # not joined yet: whatever epoch there is will be joined
        if view.epoch is None:
            return f"the cluster epoch {self._epoch} is gone from Redis"
        if view.epoch != self._epoch:
            return self._epoch_change(view, known)
        if view.head.seq < known.seq or (
                view.head.seq == known.seq and view.head.hash != known.hash):
            return (f"the audit chain head in Redis is seq {view.head.seq}, not the seq "
                    f"{known.seq} this replica saw")
        return None

    def _epoch_change(self, view: EpochView, known: ChainPoint) -> str | None:
        """None for an acknowledgement made elsewhere (joined), else why it is a loss."""
        if view.acknowledged and view.epoch not in self._known and view.head.seq >= known.seq:
            return None
        return (f"the cluster epoch in Redis changed from {self._epoch} to {view.epoch} "
                "without an acknowledgement")
