"""The audit chain: the canonical form of an event, the stored line, and what verification sees."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from gateway.core.audit_chain import (
    GENESIS,
    START,
    AuditEvent,
    AuditRecord,
    ChainPoint,
    Kind,
    Outcome,
    chain_record,
    event_digest,
    link,
    verify_chain,
)

T0 = 1_700_000_000.25


def event(number: int = 1, **changes: object) -> AuditEvent:
    base = AuditEvent(
        kind=Kind.INTENT, action="place", time=T0 + number, request_id=f"req-{number}",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736", user="demo-trader", token_id="jti-1",
        account="desk-alpha", client="10.0.0.7", user_agent="desk/1.0", market="BCCBTC",
        params={"side": "buy", "amount": "1.5", "price": "0.00012"},
        idempotency_key=f"key-{number}", id=f"{number:032x}")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def chain(count: int, start: ChainPoint = START) -> list[AuditRecord]:
    records, head = [], start
    for number in range(head.seq + 1, head.seq + count + 1):
        records.append(chain_record(head, event(number)))
        head = ChainPoint(records[-1].seq, records[-1].hash)
    return records


def head_of(records: list[AuditRecord]) -> ChainPoint:
    return ChainPoint(records[-1].seq, records[-1].hash)


def streamed(records: list[AuditRecord]) -> Iterator[AuditRecord]:
    yield from records


# The canonical form and the link


def test_the_digest_changes_with_any_field() -> None:
    assert event_digest(event()) == event_digest(event())
    assert event_digest(event()) != event_digest(event(params={"side": "sell", "amount": "1.5",
                                                              "price": "0.00012"}))
    assert event_digest(event()) != event_digest(event(user="someone-else"))


def test_params_in_another_order_give_the_same_digest() -> None:
    reordered = event(params={"price": "0.00012", "side": "buy", "amount": "1.5"})
    assert event_digest(reordered) == event_digest(event())


def test_a_whole_second_given_as_an_int_digests_as_the_float_it_is() -> None:
    assert event_digest(event(time=1_700_000_001)) == event_digest(event(time=1_700_000_001.0))


def test_fields_left_empty_are_not_part_of_the_canonical_form() -> None:
    canonical = json.loads(event(outcome=None, reason=None).canonical_json())
    assert "outcome" not in canonical
    assert "reason" not in canonical
    assert canonical["params"] == {"amount": "1.5", "price": "0.00012", "side": "buy"}


def test_the_link_covers_the_previous_hash_the_seq_and_the_digest() -> None:
    digest = event_digest(event())
    base = link(GENESIS, 1, digest)
    assert len(base) == 40
    assert base == link(GENESIS, 1, digest)
    assert base != link("1" * 40, 1, digest)
    assert base != link(GENESIS, 2, digest)
    assert base != link(GENESIS, 1, event_digest(event(2)))


def test_params_must_be_strings() -> None:
    with pytest.raises(TypeError):
        event(params={"amount": 1.5})


def test_a_time_that_is_not_finite_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        event(time=float("nan"))


# The stored line


def test_a_record_round_trips_through_its_line() -> None:
    record = chain_record(START, event(outcome=Outcome.ACCEPTED, kind=Kind.OUTCOME,
                                       upstream_status=200, order_id=42, latency_ms=3.25,
                                       intent_id="ab" * 16, reason=None))
    line = record.to_json()
    assert "\n" not in line
    assert AuditRecord.from_json(line) == record
    assert AuditRecord.from_json(line.encode()) == record
    assert AuditRecord.from_json(line).to_json() == line


def test_the_line_is_canonical_json() -> None:
    line = chain_record(START, event()).to_json()
    assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("line", [
    "not json",
    "[]",
    '{"seq": 1}',
    '{"seq": true, "prev": "' + GENESIS + '", "hash": "' + GENESIS + '", "event": {}}',
    '{"seq": 1, "prev": "xyz", "hash": "' + GENESIS + '", "event": {}}',
])
def test_garbage_is_not_a_record(line: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        AuditRecord.from_json(line)


@pytest.mark.parametrize(("field", "value"), [
    ("kind", "teleport"), ("time", "yesterday"), ("params", {"amount": 1}),
    ("order_id", "42"), ("surprise", 1), ("request_id", None), ("outcome", "maybe"),
])
def test_an_event_with_a_bad_field_is_not_a_record(field: str, value: object) -> None:
    data = json.loads(chain_record(START, event()).to_json())
    data["event"][field] = value
    with pytest.raises(ValueError, match="audit event"):
        AuditRecord.from_json(json.dumps(data))


def test_the_wire_form_names_every_field() -> None:
    wire = chain_record(START, event()).to_wire()
    assert wire["seq"] == 1
    assert wire["prev"] == GENESIS
    assert isinstance(wire["event"], dict)
    assert wire["event"]["outcome"] is None
    assert wire["event"]["market"] == "BCCBTC"


# Verification


def test_an_intact_chain_verifies() -> None:
    records = chain(10)
    result = verify_chain(streamed(records), START, head_of(records))
    assert result.ok
    assert result.checked == 10
    assert (result.problem, result.seq) == (None, None)


def test_an_empty_trail_verifies() -> None:
    assert verify_chain([], START, START).ok


def test_an_edited_record_is_named() -> None:
    records = chain(10)
    records[4] = dataclasses.replace(records[4], event=event(5, params={"amount": "100"}))
    result = verify_chain(records, START, head_of(records))
    assert not result.ok
    assert result.problem == "record 5 was edited (its content does not match its hash)"
    assert (result.seq, result.checked) == (5, 4)


def test_a_deleted_record_is_named() -> None:
    records = chain(10)
    del records[6]
    result = verify_chain(records, START, head_of(records))
    assert (result.ok, result.problem, result.seq) == (False, "record 7 is missing", 7)


def test_several_deleted_records_are_named() -> None:
    records = chain(10)
    del records[2:5]
    result = verify_chain(records, START)
    assert (result.problem, result.seq) == ("records 3 to 5 are missing", 3)


def test_swapped_records_are_named() -> None:
    records = chain(10)
    records[3], records[4] = records[4], records[3]
    result = verify_chain(streamed(records), START, head_of(chain(10)))
    assert (result.ok, result.problem, result.seq) == (
        False, "records 4 and 5 are out of order", 4)


def test_deleting_the_newest_records_is_seen_against_the_head() -> None:
    records = chain(10)
    result = verify_chain(records[:8], START, head_of(records))
    assert not result.ok
    assert result.problem == "records 9 to 10 are missing (the newest records were deleted)"
    assert (result.seq, result.checked) == (9, 8)


def test_a_record_rehashed_after_editing_breaks_the_next_link() -> None:
    records = chain(10)
    forged = event(3, params={"amount": "100"})
    records[2] = chain_record(ChainPoint(2, records[1].hash), forged)
    result = verify_chain(records, START, head_of(records))
    assert (result.problem, result.seq) == ("record 4 does not link to record 3", 4)


def test_a_record_that_does_not_continue_from_the_start_is_named() -> None:
    stranger = chain_record(ChainPoint(0, "1" * 40), event(1))
    result = verify_chain([stranger], START)
    assert (result.problem, result.seq) == ("record 1 does not link to the start of the chain", 1)


def test_a_record_repeated_later_is_named() -> None:
    records = chain(5)
    result = verify_chain([*records, records[1]], START)
    assert result.problem == "record 2 is duplicated or out of order (found after record 5)"
    assert result.seq == 2


def test_after_a_trim_the_chain_verifies_from_the_anchor() -> None:
    records = chain(10)
    anchor = ChainPoint(records[3].seq, records[3].hash)
    assert verify_chain(records[4:], anchor, head_of(records)).ok
    from_start = verify_chain(records[4:], START, head_of(records))
    assert (from_start.problem, from_start.seq) == ("records 1 to 4 are missing", 1)


def test_a_head_that_does_not_match_the_last_record_is_named() -> None:
    records = chain(3)
    result = verify_chain(records, START, ChainPoint(3, "f" * 40))
    assert (result.problem, result.seq) == ("record 3 does not match the head of the chain", 3)
