"""The audit trail over a log that fails on demand: intents fail closed, the rest is spooled.

``FlakyLog`` is an in-memory ``AuditLog`` whose ``down`` flag makes every append fail as an
unreachable store does, and whose ``gate`` can hold appends until a test releases them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.core.audit_chain import (
    START,
    AuditEvent,
    AuditRecord,
    ChainPoint,
    Kind,
    Outcome,
    chain_record,
)
from gateway.errors import StoreUnavailable
from gateway.services.audit_trail import AuditQuery, AuditTrail, verify_log
from tests.waiting import eventually

T0 = 1_700_000_000.0
PATIENCE = 10.0


class FlakyLog:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, event: AuditEvent) -> AuditRecord:
        await self.gate.wait()
        if self.down:
            raise StoreUnavailable("the audit store is down", code="audit_unavailable")
        self.records.append(chain_record(await self.head(), event))
        return self.records[-1]

    async def read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        return [record for record in self.records if record.seq > after_seq][:limit]

    async def head(self) -> ChainPoint:
        return ChainPoint(self.records[-1].seq, self.records[-1].hash) if self.records else START

    async def anchor(self) -> ChainPoint:
        return START

    async def exported(self) -> int:
        return 0

    async def mark_exported(self, seq: int) -> None:
        return None

    async def trim(self, before: float) -> int:
        return 0

    def requests(self) -> list[str]:
        return [record.event.request_id for record in self.records]


def event(request_id: str, *, kind: Kind = Kind.OUTCOME, user: str = "demo-trader",
          market: str = "BCCBTC", outcome: Outcome | None = Outcome.ACCEPTED,
          time: float = T0, action: str = "place") -> AuditEvent:
    return AuditEvent(
        kind=kind, action=action, time=time, request_id=request_id, trace_id="trace",
        user=user, token_id="jti", account="desk-alpha", client="10.0.0.7", user_agent="desk",
        market=market, params={}, outcome=None if kind is Kind.INTENT else outcome)


@pytest.fixture
def log() -> FlakyLog:
    return FlakyLog()


@pytest.fixture
async def trail(log: FlakyLog) -> AsyncIterator[AuditTrail]:
    trail = AuditTrail(log, spool_limit=100, retry_interval=0.01)
    await trail.start()
    yield trail
    await trail.close()


async def test_an_intent_is_stored_before_the_call_returns(
    log: FlakyLog, trail: AuditTrail
) -> None:
    record = await trail.write_ahead(event("r1", kind=Kind.INTENT))
    assert log.records == [record]


async def test_an_intent_the_store_cannot_take_refuses_the_order(
    log: FlakyLog, trail: AuditTrail
) -> None:
    log.down = True
    with pytest.raises(StoreUnavailable) as refused:
        await trail.write_ahead(event("r1", kind=Kind.INTENT))
    assert refused.value.code == "audit_unavailable"
    assert refused.value.status == 503
    assert trail.spooled == 0  # an intent is never kept for later: no audit, no order


async def test_outcomes_wait_out_an_outage_and_are_written_in_order(
    log: FlakyLog, trail: AuditTrail
) -> None:
    await trail.record(event("before"))
    log.down = True
    for name in ("a", "b", "c"):
        await trail.record(event(name))  # does not raise
    assert trail.spooled == 3
    log.down = False

    async def flushed() -> bool:
        return trail.spooled == 0
    assert await eventually(flushed, PATIENCE)
    assert log.requests() == ["before", "a", "b", "c"]
    assert (await verify_log(log)).checked == 4


async def test_while_records_are_spooled_new_ones_queue_behind_them(log: FlakyLog) -> None:
    trail = AuditTrail(log, spool_limit=100, retry_interval=3600)  # no retry during the test
    await trail.start()
    log.down = True
    await trail.record(event("a"))
    log.down = False
    await trail.record(event("b"))  # the store is back, but "a" is still waiting
    assert (log.requests(), trail.spooled) == ([], 2)
    await trail.close()  # close writes what it can
    assert log.requests() == ["a", "b"]


async def test_a_full_spool_drops_the_record_and_says_which(
    log: FlakyLog, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(log, spool_limit=2, retry_interval=3600)
    log.down = True
    dropped = event("third")
    for record in (event("first"), event("second"), dropped):
        await trail.record(record)
    assert (trail.spooled, trail.dropped) == (2, 1)
    assert dropped.id in caplog.text
    log.down = False
    await trail.close()
    assert log.requests() == ["first", "second"]


async def test_close_names_what_could_not_be_written(
    log: FlakyLog, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(log, spool_limit=10, retry_interval=0.01, flush_timeout=0.2)
    await trail.start()
    log.down = True
    lost = event("lost")
    await trail.record(lost)
    with caplog.at_level(logging.ERROR):
        await trail.close()
    assert "1 records could not be written" in caplog.text
    assert lost.id in caplog.text


async def test_an_outcome_is_written_even_if_its_caller_is_cancelled(
    log: FlakyLog, trail: AuditTrail
) -> None:
    log.gate.clear()  # the store is slow
    caller = asyncio.create_task(trail.record(event("hung-up")))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    log.gate.set()

    async def written() -> bool:
        return log.requests() == ["hung-up"]
    assert await eventually(written, PATIENCE)


# Search


async def fill(log: FlakyLog) -> None:
    rows = [("alice", "BCCBTC", Kind.INTENT), ("alice", "BCCBTC", Kind.OUTCOME),
            ("bob", "ETHBTC", Kind.INTENT), ("bob", "ETHBTC", Kind.OUTCOME),
            ("alice", "ETHBTC", Kind.INTENT), ("alice", "ETHBTC", Kind.OUTCOME)]
    for number, (user, market, kind) in enumerate(rows, start=1):
        await log.append(event(f"r{number}", user=user, market=market, kind=kind,
                               time=T0 + number))


async def test_search_applies_every_filter(log: FlakyLog, trail: AuditTrail) -> None:
    await fill(log)
    page = await trail.search(AuditQuery(user="alice", market="ETHBTC"))
    assert [record.event.request_id for record in page.records] == ["r5", "r6"]
    assert page.next_after is None
    outcomes = await trail.search(AuditQuery(kind="outcome", outcome="accepted"))
    assert [record.seq for record in outcomes.records] == [2, 4, 6]
    window = await trail.search(AuditQuery(since=T0 + 2, until=T0 + 4))
    assert [record.seq for record in window.records] == [2, 3]


async def test_search_pages_with_a_cursor(log: FlakyLog, trail: AuditTrail) -> None:
    await fill(log)
    seen: list[int] = []
    cursor: int | None = 0
    while cursor is not None:
        page = await trail.search(AuditQuery(user="alice", after_seq=cursor, limit=2))
        seen += [record.seq for record in page.records]
        cursor = page.next_after
    assert seen == [1, 2, 5, 6]


async def test_search_stops_scanning_at_max_scan_and_says_where(log: FlakyLog) -> None:
    await fill(log)
    trail = AuditTrail(log, spool_limit=10, retry_interval=1, max_scan=4)
    first = await trail.search(AuditQuery(user="nobody-at-all"))
    assert (first.records, first.next_after) == ([], 4)
    rest = await trail.search(AuditQuery(user="nobody-at-all", after_seq=4))
    assert (rest.records, rest.next_after) == ([], None)
