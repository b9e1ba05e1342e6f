"""The audit trail as the order desk uses it: write-ahead intents, spooled outcomes, search.

Owns the policy between callers and the ``AuditLog``: an order's *intent* must be stored before
the order is forwarded (``write_ahead`` fails closed with ``StoreUnavailable``, code
``audit_unavailable``, and the desk refuses the order); everything else (outcomes, refusals,
admin actions) must never make a request fail after the fact, so ``record`` goes through a
``WriteSpool``: what the log cannot take is kept in order and retried every ``retry_interval``
until written (new records queue behind it, so the chain keeps their order; a full spool drops
the record with an error log naming it and counts it, ``dropped``). A lost shared state
(``StateLost``) refuses the intent as it is and keeps the rest spooled until it is acknowledged.
Also ``search`` (filters and a cursor, for ``GET /admin/audit``) and ``verify_log`` (the whole
chain, held to the export checkpoint and any reported loss, for ``audit verify``).

It does not own the log's lifetime (whoever opened it starts and closes it) or build records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gateway.core.audit_chain import (
    AuditEvent,
    AuditRecord,
    ChainPoint,
    MalformedRecord,
    Verification,
    verify_chain,
)
from gateway.core.audit_checkpoint import (
    Checkpoint,
    SegmentStart,
    TrailFacts,
    TrailVerdict,
    judge,
    segment_problem,
    segment_start,
)
from gateway.core.cluster_state import LossReport
from gateway.errors import StateLost, StoreUnavailable
from gateway.services.write_spool import WriteSpool
from gateway.stores.audit import AuditLog

UNAVAILABLE = "audit_unavailable"
_READ_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Every filter given must hold; ``since`` is inclusive, ``until`` exclusive (event time)."""

    user: str | None = None
    account: str | None = None
    market: str | None = None
    action: str | None = None
    kind: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    after_seq: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if self.limit < 1 or self.after_seq < 0:
            raise ValueError("an audit query needs limit >= 1 and after_seq >= 0")

    def matches(self, event: AuditEvent) -> bool:
        wanted = ((self.user, event.user), (self.account, event.account),
                  (self.market, event.market), (self.action, event.action),
                  (self.kind, event.kind), (self.outcome, event.outcome))
        return (all(want is None or want == have for want, have in wanted)
                and (self.since is None or event.time >= self.since)
                and (self.until is None or event.time < self.until))


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[AuditRecord]
    next_after: int | None  # pass as after_seq for the next page; None at the end


class AuditTrail:
    def __init__(self, log: AuditLog, *, spool_limit: int, retry_interval: float,
                 max_scan: int = 50_000, flush_timeout: float = 5.0) -> None:
        self._log = log
        self._spool: WriteSpool[AuditEvent] = WriteSpool(
            "audit trail", log.append, _describe, limit=spool_limit,
            retry_interval=retry_interval, flush_timeout=flush_timeout, noun="records")
        self._max_scan = max_scan

    @property
    def spooled(self) -> int:
        return self._spool.spooled

    @property
    def dropped(self) -> int:
        return self._spool.dropped

    async def start(self) -> None:
        await self._spool.start()

    async def close(self) -> None:
        """Stop retrying, then try to write the spool for up to ``flush_timeout`` seconds."""
        await self._spool.close()

    async def write_ahead(self, event: AuditEvent) -> AuditRecord:
        """Store ``event`` now; ``StoreUnavailable`` when it cannot be (refuse the order)."""
        try:
            return await self._log.append(event)
        except StateLost:
            raise
        except StoreUnavailable as exc:
            raise StoreUnavailable("the audit trail cannot record this order, so it was not "
                                   "sent", code=UNAVAILABLE) from exc

    async def record(self, event: AuditEvent) -> None:
        """Store ``event`` now, or spool it for later; never raises. The write goes on if the
        caller is cancelled (a client that hangs up does not erase an outcome)."""
        await self._spool.put(event)

    async def read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """Up to ``limit`` records after ``after_seq``, in order."""
        return await self._log.read(after_seq, limit)

    async def search(self, query: AuditQuery) -> AuditPage:
        """Matching records after ``query.after_seq``, reading at most ``max_scan`` records."""
        found: list[AuditRecord] = []
        cursor, scanned = query.after_seq, 0
        while scanned < self._max_scan:
            page = await self._log.read(cursor, min(_READ_BATCH, self._max_scan - scanned))
            if not page:
                return AuditPage(found, None)
            for record in page:
                scanned, cursor = scanned + 1, record.seq
                if query.matches(record.event):
                    found.append(record)
                    if len(found) == query.limit:
                        return AuditPage(found, cursor)
        return AuditPage(found, cursor)


def _describe(event: AuditEvent) -> str:
    return f"{event.kind} {event.action} record {event.id} of request {event.request_id}"


async def verify_log(log: AuditLog, *, checkpoint: Checkpoint | None = None,
                     loss: LossReport | None = None, batch: int = _READ_BATCH) -> TrailVerdict:
    """Verify the whole chain from the anchor to the head, streaming; then hold it to
    ``checkpoint`` (the last export's) and fail on ``loss`` (a loss reported, unacknowledged).

    Hashing runs in a worker thread that fetches pages on the event loop. Retried once when the
    anchor moved meanwhile (a trim ran), which would otherwise look like deleted records.
    """
    for _ in range(2):
        anchor = await log.anchor()
        try:
            head: ChainPoint | None = await log.head()
        except MalformedRecord:
            head = None  # the newest record is unreadable: the scan reaches and reports it
        pages = _Pages(log, asyncio.get_running_loop(), anchor, head, batch)
        seen = _Seen(pages, None if checkpoint is None else checkpoint.seq)
        result = await asyncio.to_thread(verify_chain, seen, anchor, head)
        result = pages.unreadable_first(result)
        if result.ok or await log.anchor() == anchor:
            break
    facts = TrailFacts(anchor, head or anchor, seen.at_checkpoint, seen.segments, seen.problems)
    return judge(result, facts, checkpoint, loss)


@dataclass
class _Seen:
    """Records as the verification reads them, noting the one at the checkpoint's seq and the
    segments they start."""

    records: Iterable[AuditRecord]
    wanted: int | None
    at_checkpoint: str | None = None
    segments: list[SegmentStart] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[AuditRecord]:
        for record in self.records:
            if record.seq == self.wanted:
                self.at_checkpoint = record.hash
            try:
                start = segment_start(record)
            except ValueError as exc:
                self.problems[record.seq] = str(exc)
                start = None
            if start is not None:
                self.segments.append(start)
                problem = segment_problem(record, start)
                if problem is not None:
                    self.problems[record.seq] = problem
            yield record


class _Pages:
    """Records from the anchor, in stored order, fetched page by page on the event loop."""

    def __init__(self, log: AuditLog, loop: asyncio.AbstractEventLoop, anchor: ChainPoint,
                 head: ChainPoint | None, batch: int) -> None:
        self._log, self._loop, self._batch = log, loop, batch
        self._anchor = anchor
        self._left = None if head is None else head.seq - anchor.seq  # appends after: not ours
        self._unreadable: tuple[int, str] | None = None  # its seq, what is wrong

    def __iter__(self) -> Iterator[AuditRecord]:
        cursor = self._anchor.seq  # positions, not seqs: a tampered log still pages right
        while self._left is None or self._left > 0:
            size = self._batch if self._left is None else min(self._batch, self._left)
            page = self._fetch_page(cursor, size)
            yield from page
            if len(page) < size:
                return
            cursor += len(page)
            self._left = None if self._left is None else self._left - len(page)

    def unreadable_first(self, result: Verification) -> Verification:
        """The unreadable record is the problem unless the chain broke before it."""
        if self._unreadable is None:
            return result
        seq, problem = self._unreadable
        if result.seq is not None and result.seq < seq:
            return result
        return Verification(False, result.checked, f"record {seq} is unreadable ({problem})", seq)

    def _fetch_page(self, cursor: int, size: int) -> list[AuditRecord]:
        try:
            return self._fetch(cursor, size)
        except MalformedRecord:
            pass
        page: list[AuditRecord] = []  # one by one, to keep the records before the bad one
        for position in range(cursor, cursor + size):
            try:
                record = self._fetch(position, 1)
            except MalformedRecord as exc:
                self._unreadable = (position + 1, str(exc))
                return page
            if not record:
                break
            page += record
        return page

    def _fetch(self, cursor: int, size: int) -> list[AuditRecord]:
        return asyncio.run_coroutine_threadsafe(self._log.read(cursor, size), self._loop).result()
