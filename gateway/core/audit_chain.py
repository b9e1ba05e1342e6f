"""Audit records and their hash chain: the event, its canonical form, the link, the verification.

Owns what an audit record *is* (``AuditEvent`` inside an ``AuditRecord``), the one stored and
exported form of a record (a JSON line), and the rules that make the trail tamper-evident. Pure:
no I/O, no clock, no Redis; the stores (``gateway.stores.audit``) decide where records live and
must produce exactly the line ``AuditRecord.to_json`` produces.

The chain (the event itself is ``gateway.core.audit_event``'s). Each record carries ``seq``
(1, 2, 3 … over the whole trail), ``prev`` (the hash of record ``seq - 1``, or of the trim
anchor) and ``hash = link(prev, seq, event_digest(event))``:

- ``event_digest`` is the SHA-256 of the event's canonical JSON (sorted keys, no spaces, fields
  that are None left out, so adding an optional field later does not change old digests). Tamper
  evidence rests on it: editing any field of a record changes its digest.
- ``link`` is SHA-1 of ``f"{prev}:{seq}:{digest}"``. SHA-1 because the Redis store computes the
  link inside its append script (one atomic step across replicas, see ``gateway.stores.audit``)
  and Redis's Lua offers only ``redis.sha1hex``; SHA-256 written in interpreted Lua costs about a
  millisecond per record, inside Redis's single thread, which would serialize the whole desk. The
  weakness of SHA-1 is collisions between inputs an attacker chooses; here the input is a 64-hex
  SHA-256 digest of content and the previous link, which a writer cannot steer to a collision, so
  the chain keeps its strength.

``verify_chain`` streams records (bounded memory, a small lookahead to tell a swap from a
deletion) and names the first broken (edited), missing (deleted), reordered (swapped) or unlinked
record. What it cannot see: someone able to rewrite every record after N *and* the stored head.
Exports kept elsewhere are the answer to that; they carry the hashes to compare.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.core.audit_event import (
    AuditEvent,
    Kind,
    MalformedRecord,
    Outcome,
    event_from_dict,
    new_event_id,
)

__all__ = [
    "GENESIS", "START", "AuditEvent", "AuditRecord", "ChainPoint", "Kind", "MalformedRecord",
    "Outcome", "Verification", "canonical_with_digest", "chain_record", "event_digest", "link",
    "new_event_id", "record_line", "verify_chain",
]

GENESIS = "0" * 40
LOOKAHEAD = 16  # records read ahead to tell a swap from a deletion

_LINK = re.compile(r"^[0-9a-f]{40}$")
_RECORD_FIELDS = frozenset({"event", "hash", "prev", "seq"})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int  # 1, 2, 3 ... over the whole trail
    prev: str  # hash of record seq-1 (GENESIS for seq 1, or the trim anchor)
    hash: str
    event: AuditEvent

    def to_json(self) -> str:
        """One line (no newline), the stored and exported form."""
        return record_line(self.event.canonical_json(), self.seq, self.prev, self.hash)

    @classmethod
    def from_json(cls, line: str | bytes) -> AuditRecord:
        """Parse a stored line; ``ValueError`` naming what is wrong when it is not a record."""
        try:
            data = json.loads(line)
        except ValueError as exc:  # not JSON, or not UTF-8
            raise MalformedRecord(f"not an audit record: {exc}") from exc
        if not isinstance(data, dict) or data.keys() != _RECORD_FIELDS:
            raise MalformedRecord("not an audit record: expected the fields event, hash, prev, seq")
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise MalformedRecord("audit record: seq must be a positive integer")
        return cls(seq, _link_text(data, "prev"), _link_text(data, "hash"),
                   event_from_dict(data["event"]))

    def to_wire(self) -> dict[str, object]:
        """For ``GET /admin/audit``: the exported shape with every event field, None included."""
        return {"seq": self.seq, "prev": self.prev, "hash": self.hash,
                "event": self.event.to_dict()}


def record_line(event_json: str, seq: int, prev: str, hash_: str) -> str:
    """The record's JSON line; the Redis append script builds the very same bytes."""
    return f'{{"event":{event_json},"hash":"{hash_}","prev":"{prev}","seq":{seq}}}'


def event_digest(event: AuditEvent) -> str:
    return canonical_with_digest(event)[1]


def canonical_with_digest(event: AuditEvent) -> tuple[str, str]:
    """The event's canonical JSON and its SHA-256, serialized once (what an append sends)."""
    text = event.canonical_json()
    return text, hashlib.sha256(text.encode()).hexdigest()


def link(prev: str, seq: int, digest: str) -> str:
    return hashlib.sha1(f"{prev}:{seq}:{digest}".encode()).hexdigest()


def chain_record(prev: ChainPoint, event: AuditEvent) -> AuditRecord:
    """The record that follows ``prev``."""
    seq = prev.seq + 1
    return AuditRecord(seq, prev.hash, link(prev.hash, seq, event_digest(event)), event)


@dataclass(frozen=True, slots=True)
class ChainPoint:
    """The head of the chain, or the trim anchor (seq 0, GENESIS when nothing was trimmed)."""

    seq: int
    hash: str


START = ChainPoint(0, GENESIS)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int  # records found sound before the first problem
    problem: str | None
    seq: int | None  # first bad seq

    def to_wire(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked, "problem": self.problem, "seq": self.seq}


def verify_chain(records: Iterable[AuditRecord], anchor: ChainPoint,
                 head: ChainPoint | None = None) -> Verification:
    """Check ``records`` (in stored order) continue the chain from ``anchor`` and, when given,
    end exactly at ``head`` (which catches deleting the newest records)."""
    stream = _Lookahead(records)
    last, checked = anchor, 0
    for record in stream:
        problem = _problem(record, last, stream)
        if problem is not None:
            return Verification(False, checked, *problem)
        last, checked = ChainPoint(record.seq, record.hash), checked + 1
    if head is not None and head != last:
        return Verification(False, checked, *_head_problem(last, head))
    return Verification(True, checked, None, None)


class _Lookahead:
    """An iterator that can peek a few records ahead, only when asked (bounded memory)."""

    def __init__(self, records: Iterable[AuditRecord]) -> None:
        self._records = iter(records)
        self._buffer: deque[AuditRecord] = deque()

    def __iter__(self) -> Iterator[AuditRecord]:
        return self

    def __next__(self) -> AuditRecord:
        return self._buffer.popleft() if self._buffer else next(self._records)

    def upcoming(self) -> list[int]:
        while len(self._buffer) < LOOKAHEAD:
            record = next(self._records, None)
            if record is None:
                break
            self._buffer.append(record)
        return [record.seq for record in self._buffer]


def _problem(record: AuditRecord, last: ChainPoint,
             stream: _Lookahead) -> tuple[str, int] | None:
    expected = last.seq + 1
    if record.seq > expected:
        if expected in stream.upcoming():
            return f"records {expected} and {record.seq} are out of order", expected
        return _missing(expected, record.seq - 1), expected
    if record.seq < expected:
        return (f"record {record.seq} is duplicated or out of order (found after record "
                f"{last.seq})", record.seq)
    if record.hash != link(record.prev, record.seq, event_digest(record.event)):
        return f"record {record.seq} was edited (its content does not match its hash)", record.seq
    if record.prev != last.hash:
        before = f"record {last.seq}" if last.seq else "the start of the chain"
        return f"record {record.seq} does not link to {before}", record.seq
    return None


def _head_problem(last: ChainPoint, head: ChainPoint) -> tuple[str, int]:
    if last.seq < head.seq:
        return (f"{_missing(last.seq + 1, head.seq)} (the newest records were deleted)",
                last.seq + 1)
    if last.seq > head.seq:
        return f"record {head.seq + 1} is beyond the head of the chain ({head.seq})", head.seq + 1
    return f"record {last.seq} does not match the head of the chain", last.seq


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"record {first} is missing"
    return f"records {first} to {last} are missing"


def _link_text(data: dict[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not _LINK.match(value):
        raise MalformedRecord(f"audit record: {name} must be 40 lowercase hex digits")
    return value
