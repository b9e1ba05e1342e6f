"""What ``audit verify`` makes of the checkpoint, of segments and of a pending loss (``judge``)."""

from __future__ import annotations

import pytest

from gateway.core.audit_chain import (
    START,
    AuditEvent,
    AuditRecord,
    ChainPoint,
    Kind,
    Outcome,
    chain_record,
    verify_chain,
)
from gateway.core.audit_checkpoint import (
    SEGMENT_ACTION,
    Checkpoint,
    TrailFacts,
    TrailVerdict,
    judge,
    segment_params,
    segment_problem,
    segment_start,
)
from gateway.core.cluster_state import LossReport

OLD, NEW = "a" * 32, "b" * 32


def event(number: int, action: str = "place", params: dict[str, str] | None = None,
          kind: Kind = Kind.INTENT) -> AuditEvent:
    return AuditEvent(kind=kind, action=action, time=1_700_000_000.0 + number,
                      request_id=f"req-{number}", trace_id="t", user="u", token_id=None,
                      account="desk-alpha", client=None, user_agent=None, market="BCCBTC",
                      params=params or {"n": str(number)},
                      outcome=Outcome.ACCEPTED if kind is Kind.ADMIN else None)


def chain(count: int, after: ChainPoint = START, first: int = 1) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    point = after
    for number in range(first, first + count):
        record = chain_record(point, event(number))
        records.append(record)
        point = ChainPoint(record.seq, record.hash)
    return records


def point(record: AuditRecord) -> ChainPoint:
    return ChainPoint(record.seq, record.hash)


def segment(follows: ChainPoint, *, in_place: bool = False) -> AuditRecord:
    params = segment_params(follows, in_place=in_place, lost_epoch=OLD, epoch=NEW,
                            loss=f"the cluster epoch {OLD} is gone from Redis",
                            reason="redis restarted empty")
    return chain_record(follows, event(99, SEGMENT_ACTION, params, Kind.ADMIN))


def verdict(records: list[AuditRecord], anchor: ChainPoint, checkpoint: Checkpoint | None,
            loss: LossReport | None = None) -> TrailVerdict:
    head = point(records[-1]) if records else anchor
    starts = [start for record in records if (start := segment_start(record)) is not None]
    problems = {record.seq: problem for record in records
                if (start := segment_start(record)) is not None
                and (problem := segment_problem(record, start)) is not None}
    wanted = None if checkpoint is None else checkpoint.seq
    at = next((record.hash for record in records if record.seq == wanted), None)
    return judge(verify_chain(records, anchor, head), TrailFacts(anchor, head, at, starts,
                                                                 problems), checkpoint, loss)


def test_a_checkpoint_reads_back_and_a_bad_one_names_its_field() -> None:
    checkpoint = Checkpoint(6, "c" * 40, OLD)
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint
    with pytest.raises(ValueError, match="checkpoint: hash must be 40 lowercase hex digits"):
        Checkpoint.from_json('{"seq": 6, "hash": "xyz", "epoch": null}')


def test_a_trail_that_continues_the_checkpoint_verifies() -> None:
    records = chain(10)
    result = verdict(records, START, Checkpoint(6, records[5].hash, OLD))
    assert (result.ok, result.checked, result.problem) == (True, 10, None)


def test_a_trail_that_ends_before_the_checkpoint_restarted() -> None:
    checkpoint = Checkpoint(6, chain(6)[5].hash, OLD)
    result = verdict(chain(2), START, checkpoint)
    assert (result.ok, result.seq) == (False, 3)
    assert result.problem == (f"the audit trail ends at seq 2, before the last exported "
                              f"checkpoint (seq 6, hash {checkpoint.hash}, epoch {OLD}): it "
                              "restarted or lost its newest records")


def test_another_chain_as_long_as_the_exported_one_does_not_pass_for_it() -> None:
    checkpoint = Checkpoint(6, chain(6)[5].hash, None)
    result = verdict(chain(8, first=50), START, checkpoint)
    assert (result.ok, result.seq) == (False, 6)
    assert result.problem is not None
    assert result.problem.startswith("record 6 does not match the last exported checkpoint")


def test_an_acknowledged_segment_verifies_and_names_what_was_lost_after_the_checkpoint() -> None:
    old = chain(10)
    last = point(old[-1])
    start = segment(last)
    records = [start, *chain(3, after=point(start), first=11)]
    result = verdict(records, last, Checkpoint(6, old[5].hash, OLD))
    assert (result.ok, result.checked) == (True, 4)
    assert result.to_wire()["segments"] == [{
        "seq": 11, "follows_seq": 10, "follows_hash": last.hash, "in_place": False,
        "lost_epoch": OLD, "epoch": NEW, "reason": "redis restarted empty", "acknowledged": True,
        "lost_after_checkpoint": [7, 10]}]


def test_a_segment_in_place_lost_nothing() -> None:
    old = chain(10)
    records = [*old, segment(point(old[-1]), in_place=True)]
    result = verdict(records, START, Checkpoint(6, old[5].hash, OLD))
    assert result.ok
    assert result.to_wire()["segments"][0]["lost_after_checkpoint"] is None  # type: ignore[index]


def test_a_segment_that_does_not_follow_the_head_it_names_fails() -> None:
    old = chain(10)
    claimed = segment(point(old[4]))  # says it follows record 5
    records = [chain_record(point(old[-1]), claimed.event)]
    result = verdict(records, point(old[-1]), None)
    assert (result.ok, result.seq) == (False, 11)
    assert result.problem == "record 11 starts a segment after seq 5 but does not follow it"


def test_a_loss_reported_and_not_acknowledged_fails_even_on_a_sound_trail() -> None:
    records = chain(4)
    loss = LossReport(OLD, ChainPoint(9, "9" * 40), "the audit chain head in Redis is seq 4, not "
                      "the seq 9 this replica saw")
    result = verdict(records, START, None, loss)
    assert (result.ok, result.seq) == (False, 5)
    assert result.problem == (f"a state loss is reported and not acknowledged ({loss.reason}); "
                              "the replicas knew the chain up to seq 9")
    assert result.to_wire()["state_loss"] == {"epoch": OLD, "last_seq": 9,
                                              "last_hash": "9" * 40, "reason": loss.reason,
                                              "acknowledged": False}
