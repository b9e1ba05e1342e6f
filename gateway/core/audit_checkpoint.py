"""Where the audit trail must continue from: the export checkpoint, and segments after a loss.

Two facts outside the chain's own links decide whether a trail is the one a desk wrote:

- The *checkpoint*: the last record an ``audit export --mark-exported`` wrote out (its seq, hash
  and the cluster epoch then), kept in a file outside Redis. A trail that does not hold that
  record (or its trimmed anchor) under that hash, or that ends before it, restarted or lost its
  newest records: ``audit verify`` fails naming it.
- *Segments*: an acknowledged state loss (``gateway.services.state_loss``) starts a new segment
  whose first record is an admin record ``state_loss.acknowledge`` naming the last chain head
  the replicas knew (``last_seq``, ``last_hash``), the lost and the new epoch. It follows that
  head (its ``prev`` is ``last_hash``, its seq ``last_seq + 1``): in place when Redis still held
  that head, else after an anchor set to it, the older records having been exported and dropped.
  So the break is in the trail itself, and numbering goes on. Records between the checkpoint and
  that head were never exported and are gone: ``verify`` names them as lost, acknowledged.

``judge`` combines the chain's own verification with both facts and with a loss reported in
Redis and not acknowledged yet (which fails). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.core.audit_chain import AuditRecord, ChainPoint, Kind, Verification
from gateway.core.cluster_state import LossReport

SEGMENT_ACTION = "state_loss.acknowledge"
_LINK = re.compile(r"^[0-9a-f]{40}$")
_SEGMENT_FIELDS = ("last_seq", "last_hash", "in_place", "lost_epoch", "epoch", "loss", "reason")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last record an export wrote out; ``epoch`` None for a file trail (no epoch)."""

    seq: int
    hash: str
    epoch: str | None

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "hash": self.hash, "epoch": self.epoch},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """``ValueError`` naming what is wrong when ``text`` is not a checkpoint."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not a checkpoint: {exc}") from None
        if not isinstance(data, dict) or set(data) != {"seq", "hash", "epoch"}:
            raise ValueError("not a checkpoint: expected the fields seq, hash, epoch")
        seq, hash_, epoch = data["seq"], data["hash"], data["epoch"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("checkpoint: seq must be a positive integer")
        if not isinstance(hash_, str) or not _LINK.match(hash_):
            raise ValueError("checkpoint: hash must be 40 lowercase hex digits")
        if epoch is not None and not isinstance(epoch, str):
            raise ValueError("checkpoint: epoch must be a string or null")
        return cls(seq, hash_, epoch)

    def to_wire(self) -> dict[str, object]:
        return {"seq": self.seq, "hash": self.hash, "epoch": self.epoch}

    def describe(self) -> str:
        epoch = f", epoch {self.epoch}" if self.epoch else ""
        return f"seq {self.seq}, hash {self.hash}{epoch}"


@dataclass(frozen=True, slots=True)
class SegmentStart:
    """The first record of a segment: what it says it follows."""

    seq: int
    follows: ChainPoint
    in_place: bool
    lost_epoch: str
    epoch: str
    reason: str

    def to_wire(self, lost: tuple[int, int] | None) -> dict[str, object]:
        return {"seq": self.seq, "follows_seq": self.follows.seq,
                "follows_hash": self.follows.hash, "in_place": self.in_place,
                "lost_epoch": self.lost_epoch, "epoch": self.epoch, "reason": self.reason,
                "acknowledged": True,
                "lost_after_checkpoint": None if lost is None else list(lost)}


def segment_params(last: ChainPoint, *, in_place: bool, lost_epoch: str, epoch: str,
                   loss: str, reason: str) -> dict[str, str]:
    """The params of a segment's first record (an admin record, ``SEGMENT_ACTION``)."""
    return {"last_seq": str(last.seq), "last_hash": last.hash,
            "in_place": "true" if in_place else "false", "lost_epoch": lost_epoch,
            "epoch": epoch, "loss": loss, "reason": reason}


def segment_start(record: AuditRecord) -> SegmentStart | None:
    """The segment ``record`` starts; None for any other record. ``ValueError`` when it is a
    segment record whose params do not say what it follows."""
    event = record.event
    if event.kind is not Kind.ADMIN or event.action != SEGMENT_ACTION:
        return None
    params = event.params
    missing = [name for name in _SEGMENT_FIELDS if name not in params]
    if missing or not params["last_seq"].isdigit() or not _LINK.match(params["last_hash"]):
        raise ValueError(f"record {record.seq} starts a segment but does not name the head it "
                         "follows")
    return SegmentStart(record.seq, ChainPoint(int(params["last_seq"]), params["last_hash"]),
                        params["in_place"] == "true", params["lost_epoch"], params["epoch"],
                        params["reason"])


def segment_problem(record: AuditRecord, start: SegmentStart) -> str | None:
    """A segment's first record must follow exactly the head it names."""
    if start.follows != ChainPoint(record.seq - 1, record.prev):
        return (f"record {record.seq} starts a segment after seq {start.follows.seq} but does "
                f"not follow it")
    return None


@dataclass(frozen=True, slots=True)
class TrailVerdict:
    """``audit verify``'s answer: the chain, the checkpoint, the segments, a pending loss."""

    ok: bool
    checked: int
    problem: str | None
    seq: int | None
    checkpoint: Checkpoint | None = None
    segments: tuple[tuple[SegmentStart, tuple[int, int] | None], ...] = ()
    loss: LossReport | None = None

    def to_wire(self) -> dict[str, object]:
        loss = self.loss
        return {
            "ok": self.ok, "checked": self.checked, "problem": self.problem, "seq": self.seq,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_wire(),
            "segments": [start.to_wire(lost) for start, lost in self.segments],
            "state_loss": None if loss is None else {
                "epoch": loss.epoch, "last_seq": loss.head.seq, "last_hash": loss.head.hash,
                "reason": loss.reason, "acknowledged": False},
        }


@dataclass(frozen=True, slots=True)
class TrailFacts:
    """What a scan of the trail found beside the chain's verification."""

    anchor: ChainPoint
    head: ChainPoint
    at_checkpoint: str | None  # the hash of the record at the checkpoint's seq, when read
    segments: Sequence[SegmentStart] = ()
    segment_problems: Mapping[int, str] = field(default_factory=dict)  # seq -> what is wrong


def judge(chain: Verification, facts: TrailFacts, checkpoint: Checkpoint | None,
          loss: LossReport | None) -> TrailVerdict:
    """The verdict: the first problem of the chain, of a segment, against the checkpoint, or an
    unacknowledged loss, in that order (a pending loss is named with a checkpoint problem)."""
    segments = tuple((start, _lost(start, facts.anchor, checkpoint)) for start in facts.segments)
    found: tuple[str, int] | None = None
    if not chain.ok:
        found = (chain.problem or "the chain is broken", chain.seq or 0)
    elif facts.segment_problems:
        seq = min(facts.segment_problems)
        found = (facts.segment_problems[seq], seq)
    elif checkpoint is not None:
        found = checkpoint_problem(checkpoint, facts.anchor, facts.head, facts.at_checkpoint)
    if loss is not None and (found is None or chain.ok):
        pending = (f"a state loss is reported and not acknowledged ({loss.reason}); the "
                   f"replicas knew the chain up to seq {loss.head.seq}")
        found = (pending, facts.head.seq + 1) if found is None else (
            f"{found[0]}; {pending}", found[1])
    if found is None:
        return TrailVerdict(True, chain.checked, None, None, checkpoint, segments, loss)
    return TrailVerdict(False, chain.checked, found[0], found[1], checkpoint, segments, loss)


def checkpoint_problem(checkpoint: Checkpoint, anchor: ChainPoint, head: ChainPoint,
                       at_checkpoint: str | None) -> tuple[str, int] | None:
    """Whether a trail from ``anchor`` to ``head`` continues ``checkpoint`` (``at_checkpoint``:
    the hash of its record at the checkpoint's seq); the problem and its seq if not."""
    if checkpoint.seq > head.seq:
        return (f"the audit trail ends at seq {head.seq}, before the last exported checkpoint "
                f"({checkpoint.describe()}): it restarted or lost its newest records",
                head.seq + 1)
    if checkpoint.seq < anchor.seq:
        return None  # trimmed past it (trim drops only exported records) or lost before a segment
    have = anchor.hash if checkpoint.seq == anchor.seq else at_checkpoint
    if have != checkpoint.hash:
        return (f"record {checkpoint.seq} does not match the last exported checkpoint "
                f"({checkpoint.describe()}): the trail is not the one exported (it restarted "
                "or was replaced)", checkpoint.seq)
    return None


def _lost(start: SegmentStart, anchor: ChainPoint,
          checkpoint: Checkpoint | None) -> tuple[int, int] | None:
    """Records between the checkpoint and the head a segment follows, never exported and gone
    (only a segment that follows its anchor dropped anything)."""
    if start.in_place or checkpoint is None or start.follows != anchor:
        return None
    if checkpoint.seq >= start.follows.seq:
        return None
    return checkpoint.seq + 1, start.follows.seq
