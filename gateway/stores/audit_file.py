"""The audit log in a local file: the single-process embedded default (``audit.backend: file``).

Owns ``FileAuditLog`` (re-exported by ``gateway.stores.audit``, which holds the protocol). Files,
all next to ``audit.file``:

- ``<file>``           JSON lines, one record each (``AuditRecord.to_json``), in seq order
- ``<file>.anchor``    ``{"seq", "hash"}`` of the last trimmed record (absent: nothing trimmed)
- ``<file>.exported``  ``{"seq"}``: the highest seq an export has written out
- ``<file>.lock``      held with an exclusive ``flock`` by the one process that writes

The lock is a file of its own because trimming replaces ``<file>`` by a rename, which a lock on
``<file>`` itself would not survive. Side files are written whole and renamed into place. Only
the writer moves the anchor; exporters in other processes move ``exported``, hence two files.

Appends are group-committed: callers queue, one task writes every queued record in one
``write`` + ``fsync`` (in a worker thread, so the event loop never waits on the disk) and answers
them all; an ``append`` returns once its record is on disk. A failed write is cut off again, so
the file never keeps half a record. At start the head is recovered from the last line (an
unfinished last line, from a crash mid-write, is dropped with a warning: it was never
acknowledged) and a trim interrupted between its two renames is completed.

``read_only`` opens without the lock, for ``audit export``/``verify`` beside a running gateway:
it reads what is on disk, re-reading the head and side files each time. This module does not
build records (``gateway.core.audit_chain`` does) or decide what to record or keep; the
blocking file mechanics are ``gateway.stores.audit_file_io``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from gateway.core.audit_chain import START, AuditEvent, AuditRecord, ChainPoint, chain_record
from gateway.errors import StoreUnavailable
from gateway.stores.audit_file_io import (
    MODE,
    UNAVAILABLE,
    LineIndex,
    beside,
    copy_from,
    fsync_directory,
    lock_exclusively,
    read_side_file,
    tail,
    write_all,
    write_atomic,
)

logger = logging.getLogger(__name__)

Pending = tuple[AuditEvent, asyncio.Future[AuditRecord]]


class FileAuditLog:
    """Audit records as JSON lines in ``path``, written by one process at a time."""

    def __init__(self, path: Path, *, fsync: bool = True, read_only: bool = False) -> None:
        self._path = path
        self._fsync = fsync
        self._read_only = read_only
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._head = self._anchor = START
        self._size = 0  # bytes on disk and acknowledged; reads never look past them
        self._broken: str | None = None
        self._pending: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()  # one write, trim or close at a time
        self._read_lock = threading.Lock()  # the line index, and the file swap of a trim
        self._index = LineIndex()

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        if not self._read_only and self._fd is None:
            await asyncio.to_thread(self._open)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        await asyncio.to_thread(self._close)

    async def append(self, event: AuditEvent) -> AuditRecord:
        self._writable()
        future: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-file-flush")
        return await future

    async def read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        return await asyncio.to_thread(self._read, after_seq, limit)

    async def head(self) -> ChainPoint:
        return self._head if self._fd is not None else await asyncio.to_thread(self._disk_head)

    async def anchor(self) -> ChainPoint:
        return self._anchor if self._fd is not None else await asyncio.to_thread(self._load_anchor)

    async def exported(self) -> int:
        return await asyncio.to_thread(self._load_exported)

    async def mark_exported(self, seq: int) -> None:
        head = await self.head()
        await asyncio.to_thread(self._mark_exported, min(seq, head.seq))

    async def trim(self, before: float) -> int:
        self._writable()
        return await asyncio.to_thread(self._trim, before)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                records = await asyncio.to_thread(self._write, [event for event, _ in batch])
            except (StoreUnavailable, ValueError) as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), record in zip(batch, records, strict=True):
                if not future.done():  # its caller may have given up; the record stays
                    future.set_result(record)

    def _writable(self) -> None:
        if self._read_only or self._fd is None:
            state = "opened read-only" if self._read_only else "not open"
            raise StoreUnavailable(f"the audit log {self._path} is {state}", code=UNAVAILABLE)

    # Everything below runs in worker threads.

    def _open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock_exclusively(beside(self._path, ".lock"), self._path)
            self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, MODE)
            self._anchor = self._load_anchor()
            self._size, self._head = self._recover(self._fd)
            self._finish_trim()
        except OSError as exc:
            self._close()
            raise _failure(f"cannot open the audit log {self._path}", exc) from exc
        except StoreUnavailable:
            self._close()
            raise

    def _close(self) -> None:
        with self._write_lock:
            for fd in (self._fd, self._lock_fd):  # closing the lock file releases the flock
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None

    def _recover(self, fd: int) -> tuple[int, ChainPoint]:
        size = os.fstat(fd).st_size
        end, last = tail(fd, size)
        if end < size:
            logger.warning("audit log %s: dropping an unfinished last record (%d bytes) left "
                           "by a write that never completed", self._path, size - end)
            os.ftruncate(fd, end)
        if last is None:
            return end, self._anchor
        try:
            record = AuditRecord.from_json(last)
        except ValueError as exc:
            raise StoreUnavailable(
                f"the last record of the audit log {self._path} is unreadable ({exc}); run "
                "`expie-gateway audit verify`", code=UNAVAILABLE) from exc
        return end, ChainPoint(record.seq, record.hash)

    def _write(self, events: list[AuditEvent]) -> list[AuditRecord]:
        with self._write_lock:
            if self._broken or self._fd is None:
                raise StoreUnavailable(self._broken or f"the audit log {self._path} is closed",
                                       code=UNAVAILABLE)
            records, head = [], self._head
            for event in events:
                records.append(chain_record(head, event))
                head = ChainPoint(records[-1].seq, records[-1].hash)
            data = "".join(f"{record.to_json()}\n" for record in records).encode()
            try:
                write_all(self._fd, data)
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                self._cut_back(self._fd)
                raise _failure(f"cannot write the audit log {self._path}", exc) from exc
            self._size, self._head = self._size + len(data), head
            return records

    def _cut_back(self, fd: int) -> None:
        """Drop whatever a failed write left after the last acknowledged record."""
        try:
            os.ftruncate(fd, self._size)
        except OSError as exc:
            self._broken = (f"the audit log {self._path} could not be repaired after a failed "
                            f"write ({exc.strerror}); restart the gateway")
            logger.error("%s", self._broken)  # noqa: TRY400 - the cause is in the message

    def _read(self, after_seq: int, limit: int) -> list[AuditRecord]:
        with self._read_lock:
            anchor = self._anchor if self._fd is not None else self._load_anchor()
            position = max(after_seq - anchor.seq, 0)
            try:
                file = self._path.open("rb")
            except FileNotFoundError:
                return []
            with file:
                stat = os.fstat(file.fileno())
                size = self._size if self._fd is not None else stat.st_size
                lines = self._index.count(file, (stat.st_dev, stat.st_ino), size)
                if position >= lines:
                    return []
                self._index.seek(file, position)
                wanted = min(limit, lines - position)
                return [AuditRecord.from_json(file.readline()) for _ in range(wanted)]

    def _disk_head(self) -> ChainPoint:
        try:
            file = self._path.open("rb")
        except FileNotFoundError:
            return self._load_anchor()
        with file:
            _, last = tail(file.fileno(), os.fstat(file.fileno()).st_size)
        if last is None:
            return self._load_anchor()
        record = AuditRecord.from_json(last)
        return ChainPoint(record.seq, record.hash)

    def _trim(self, before: float) -> int:
        with self._write_lock:
            exported, count, offset = self._load_exported(), 0, 0
            last: AuditRecord | None = None
            with self._path.open("rb") as file:
                for line in file:
                    record = _parsed(line)
                    if (offset + len(line) > self._size or record is None
                            or record.seq > exported or record.event.time >= before):
                        break
                    count, offset, last = count + 1, offset + len(line), record
            if last is not None:
                self._rewrite(offset, ChainPoint(last.seq, last.hash))
            return count

    def _finish_trim(self) -> None:
        """Complete a trim that wrote the new anchor but did not replace the file."""
        offset = 0
        with self._path.open("rb") as file:
            for line in file:
                record = _parsed(line)
                if record is None or record.seq > self._anchor.seq:
                    return
                offset += len(line)
                if ChainPoint(record.seq, record.hash) == self._anchor:
                    break
            else:
                return
        logger.warning("audit log %s: completing an interrupted trim", self._path)
        self._rewrite(offset, None)

    def _rewrite(self, offset: int, anchor: ChainPoint | None) -> None:
        """Replace the file by its bytes from ``offset``; the new anchor goes first, so a crash
        in between leaves what ``_finish_trim`` completes."""
        assert self._fd is not None
        temporary = beside(self._path, f".{uuid.uuid4().hex}.tmp")
        try:
            copy_from(self._fd, offset, self._size, temporary)
            with self._read_lock:
                self._swap(temporary, offset, anchor)
        except OSError as exc:
            raise _failure(f"cannot trim the audit log {self._path}", exc) from exc
        finally:
            temporary.unlink(missing_ok=True)

    def _swap(self, temporary: Path, offset: int, anchor: ChainPoint | None) -> None:
        assert self._fd is not None
        if anchor is not None:
            write_atomic(beside(self._path, ".anchor"), _point_json(anchor))
            self._anchor = anchor
        try:
            os.replace(temporary, self._path)
            fsync_directory(self._path.parent)
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:  # the anchor moved but the file did not: a restart completes it
            self._broken = f"the audit log {self._path} is mid-trim ({exc}); restart to complete"
            raise
        os.close(self._fd)
        self._fd, self._size = fd, self._size - offset
        self._index = LineIndex()

    def _load_anchor(self) -> ChainPoint:
        data = read_side_file(beside(self._path, ".anchor"))
        return START if data is None else ChainPoint(data[0], data[1] or "")

    def _load_exported(self) -> int:
        data = read_side_file(beside(self._path, ".exported"))
        return 0 if data is None else data[0]

    def _mark_exported(self, seq: int) -> None:
        if seq > self._load_exported():
            write_atomic(beside(self._path, ".exported"), json.dumps({"seq": seq}))


def _parsed(line: bytes) -> AuditRecord | None:
    try:
        return AuditRecord.from_json(line)
    except ValueError:
        return None


def _point_json(point: ChainPoint) -> str:
    return json.dumps({"seq": point.seq, "hash": point.hash})


def _failure(message: str, exc: OSError) -> StoreUnavailable:
    return StoreUnavailable(f"{message}: {exc.strerror or exc}", code=UNAVAILABLE)
