"""The audit log contract, run against the file and the Redis implementation.

A ``Backend`` opens logs over one stored trail: for the file a ``FileAuditLog`` on one path in
``tmp_path`` (one writer at a time), for Redis a new ``RedisAuditLog`` on its own client (another
replica) under the test's key prefix. Its ``edit``/``delete``/``swap``/``garble`` change the stored
records behind the log's back, as someone with access to the disk or to Redis could.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
import redis.asyncio

from gateway.core.audit_chain import GENESIS, AuditEvent, AuditRecord, ChainPoint, Kind
from gateway.errors import StoreUnavailable
from gateway.services.audit_trail import verify_log
from gateway.stores.audit import AuditLog, FileAuditLog, RedisAuditLog
from gateway.stores.redis_client import connect_redis
from tests.component.conftest import TcpRelay

T0 = 1_700_000_000.0


def event(number: int, *, time: float | None = None, kind: Kind = Kind.INTENT) -> AuditEvent:
    return AuditEvent(
        kind=kind, action="place", time=T0 + number if time is None else time,
        request_id=f"req-{number}", trace_id="trace", user="demo-trader", token_id="jti",
        account="desk-alpha", client="10.0.0.7", user_agent="desk/1.0", market="BCCBTC",
        params={"side": "buy", "amount": str(number)})


class Backend(Protocol):
    async def open(self) -> AuditLog:
        """A started log over the shared trail."""

    async def reopen(self) -> AuditLog:
        """Close every log opened so far, then open one."""

    async def edit(self, seq: int) -> None: ...

    async def delete(self, seq: int) -> None: ...

    async def swap(self, first: int, second: int) -> None: ...

    async def garble(self, seq: int) -> None: ...


class FileBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[FileAuditLog] = []

    async def open(self) -> FileAuditLog:
        log = FileAuditLog(self.path)  # fsync on: the default
        await log.start()
        self.opened.append(log)
        return log

    async def reopen(self) -> FileAuditLog:
        await self.aclose()
        return await self.open()

    async def aclose(self) -> None:
        for log in self.opened:
            await log.close()
        self.opened.clear()

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()

    def write(self, lines: list[str]) -> None:
        self.path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    def index(self, lines: list[str], seq: int) -> int:
        return next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == seq)

    async def edit(self, seq: int) -> None:
        lines = self.lines()
        lines[self.index(lines, seq)] = edited(lines[self.index(lines, seq)])
        self.write(lines)

    async def delete(self, seq: int) -> None:
        lines = self.lines()
        del lines[self.index(lines, seq)]
        self.write(lines)

    async def swap(self, first: int, second: int) -> None:
        lines = self.lines()
        a, b = self.index(lines, first), self.index(lines, second)
        lines[a], lines[b] = lines[b], lines[a]
        self.write(lines)

    async def garble(self, seq: int) -> None:
        lines = self.lines()
        lines[self.index(lines, seq)] = "{not a record"
        self.write(lines)


class RedisBackend:
    def __init__(self, url: str, client: redis.asyncio.Redis, prefix: str) -> None:
        self.url, self.client, self.prefix = url, client, prefix
        self.records = f"{prefix}audit:records"
        self.clients: list[redis.asyncio.Redis] = []

    async def open(self, url: str | None = None) -> RedisAuditLog:
        client = connect_redis(url or self.url)
        self.clients.append(client)
        log = RedisAuditLog(client, self.prefix)
        await log.start()
        return log

    async def reopen(self) -> RedisAuditLog:
        return await self.open()

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def position(self, seq: int) -> int:
        lines = await self.client.lrange(self.records, 0, -1)
        return next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == seq)

    async def edit(self, seq: int) -> None:
        index = await self.position(seq)
        line = await self.client.lindex(self.records, index)
        await self.client.lset(self.records, index, edited(line.decode()))

    async def delete(self, seq: int) -> None:
        await self.client.lset(self.records, await self.position(seq), "deleted")
        await self.client.lrem(self.records, 1, "deleted")

    async def swap(self, first: int, second: int) -> None:
        a, b = await self.position(first), await self.position(second)
        line_a, line_b = [await self.client.lindex(self.records, i) for i in (a, b)]
        await self.client.lset(self.records, a, line_b)
        await self.client.lset(self.records, b, line_a)

    async def garble(self, seq: int) -> None:
        await self.client.lset(self.records, await self.position(seq), "{not a record")


def edited(line: str) -> str:
    """The record with a bigger amount, still well-formed: only the chain can tell."""
    data = json.loads(line)
    data["event"]["params"]["amount"] = "1000000"
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@pytest.fixture
async def file_backend(tmp_path: Path) -> AsyncIterator[FileBackend]:
    backend = FileBackend(tmp_path / "var" / "audit.jsonl")  # the directory does not exist yet
    yield backend
    await backend.aclose()


@pytest.fixture
async def redis_backend(
    redis_url: str, redis_client: redis.asyncio.Redis, key_prefix: str
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, redis_client, key_prefix)
    yield backend
    await backend.aclose()


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each contract test runs on both; only the Redis run asks for the Redis fixtures."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


async def append_many(log: AuditLog, count: int, first: int = 1) -> list[AuditRecord]:
    return [await log.append(event(number)) for number in range(first, first + count)]


# The contract


async def test_appends_form_one_chain_from_genesis(backend: Backend) -> None:
    log = await backend.open()
    records = await append_many(log, 5)
    assert [record.seq for record in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    assert all(later.prev == earlier.hash for earlier, later in itertools.pairwise(records))
    assert await log.head() == ChainPoint(5, records[-1].hash)
    assert await log.anchor() == ChainPoint(0, GENESIS)
    result = await verify_log(log)
    assert (result.ok, result.checked) == (True, 5)


async def test_what_is_read_back_is_what_was_appended(backend: Backend) -> None:
    log = await backend.open()
    records = await append_many(log, 25)
    pages = [await log.read(after, 10) for after in (0, 10, 20, 25)]
    assert [len(page) for page in pages] == [10, 10, 5, 0]
    assert [record for page in pages for record in page] == records


async def test_concurrent_appends_on_one_log_leave_no_gap(backend: Backend) -> None:
    log = await backend.open()
    records = await asyncio.gather(*(log.append(event(n)) for n in range(1, 101)))
    assert sorted(record.seq for record in records) == list(range(1, 101))
    assert (await verify_log(log)).checked == 100


async def test_the_trail_continues_after_a_restart(backend: Backend) -> None:
    log = await backend.open()
    await append_many(log, 3)
    log = await backend.reopen()
    assert (await log.head()).seq == 3
    record = await log.append(event(4))
    assert record.seq == 4
    assert (await verify_log(log)).ok


async def test_exported_only_moves_forward_and_never_past_the_head(backend: Backend) -> None:
    log = await backend.open()
    await append_many(log, 10)
    await log.mark_exported(7)
    await log.mark_exported(3)
    assert await log.exported() == 7
    await log.mark_exported(100)
    assert await log.exported() == 10


async def test_trim_removes_only_old_exported_records(backend: Backend) -> None:
    log = await backend.open()
    records = await append_many(log, 10)  # event times T0+1 ... T0+10
    assert await log.trim(before=T0 + 100) == 0  # nothing exported yet
    await log.mark_exported(5)
    assert await log.trim(before=T0 + 3.5) == 3  # older than that: records 1-3
    assert await log.trim(before=T0 + 100) == 2  # exported: up to 5
    assert await log.anchor() == ChainPoint(5, records[4].hash)
    assert await log.read(0, 100) == records[5:]
    result = await verify_log(log)
    assert (result.ok, result.checked) == (True, 5)
    assert (await log.append(event(11))).seq == 11
    assert (await verify_log(await backend.reopen())).ok


async def test_an_edited_record_is_found(backend: Backend) -> None:
    await append_many(await backend.open(), 6)
    await backend.edit(3)
    result = await verify_log(await backend.reopen())
    assert (result.ok, result.seq) == (False, 3)
    assert result.problem == "record 3 was edited (its content does not match its hash)"


async def test_a_deleted_record_is_found(backend: Backend) -> None:
    await append_many(await backend.open(), 6)
    await backend.delete(4)
    result = await verify_log(await backend.reopen())
    assert (result.ok, result.problem, result.seq) == (False, "record 4 is missing", 4)


async def test_swapped_records_are_found(backend: Backend) -> None:
    await append_many(await backend.open(), 6)
    await backend.swap(2, 3)
    result = await verify_log(await backend.reopen())
    assert (result.ok, result.problem) == (False, "records 2 and 3 are out of order")


async def test_an_unreadable_record_is_found(backend: Backend) -> None:
    await append_many(await backend.open(), 6)
    await backend.garble(4)
    result = await verify_log(await backend.reopen())
    assert (result.ok, result.seq, result.checked) == (False, 4, 3)
    assert result.problem is not None
    assert result.problem.startswith("record 4 is unreadable")


# Redis: many replicas, one chain


@pytest.mark.redis
async def test_two_replicas_appending_at_once_make_one_gapless_chain(
    redis_backend: RedisBackend,
) -> None:
    first, second = await redis_backend.open(), await redis_backend.open()
    appends = [log.append(event(n)) for n in range(200) for log in (first, second)]
    records = await asyncio.gather(*appends)
    assert sorted(record.seq for record in records) == list(range(1, 401))
    result = await verify_log(first)
    assert (result.ok, result.checked) == (True, 400)


@pytest.mark.redis
async def test_redis_stores_exactly_the_line_of_the_record(redis_backend: RedisBackend) -> None:
    log = await redis_backend.open()
    records = [await log.append(event(1)), await log.append(AuditEvent(
        kind=Kind.ADMIN, action="kill_switch", time=T0, request_id="r", trace_id="t",
        user="desk-admin \u00e9\"\\", token_id=None, account=None, client=None, user_agent=None,
        market=None, params={}, reason="maintenance"))]
    stored = await redis_backend.client.lrange(redis_backend.records, 0, -1)
    assert [line.decode() for line in stored] == [record.to_json() for record in records]


@pytest.mark.redis
async def test_deleting_the_newest_record_in_redis_is_found(redis_backend: RedisBackend) -> None:
    log = await redis_backend.open()
    await append_many(log, 5)
    await redis_backend.client.rpop(redis_backend.records)
    result = await verify_log(log)
    assert (result.ok, result.seq) == (False, 5)
    assert result.problem == "record 5 is missing (the newest records were deleted)"


@pytest.mark.redis
async def test_an_unreachable_redis_refuses_the_append(
    redis_backend: RedisBackend, redis_relay: TcpRelay
) -> None:
    log = await redis_backend.open(redis_relay.url)
    await log.append(event(1))
    await redis_relay.stop()
    with pytest.raises(StoreUnavailable) as refused:
        await log.append(event(2))
    assert refused.value.code == "audit_unavailable"


# File: one writer, crash recovery


async def test_a_second_writer_on_the_same_file_is_refused(file_backend: FileBackend) -> None:
    await file_backend.open()
    second = FileAuditLog(file_backend.path)
    with pytest.raises(StoreUnavailable, match=str(file_backend.path)) as refused:
        await second.start()
    assert refused.value.code == "audit_unavailable"
    await file_backend.aclose()
    await second.start()  # free again once the first writer closed
    await second.close()


async def test_a_reader_beside_the_writer_sees_the_written_records(
    file_backend: FileBackend,
) -> None:
    writer = await file_backend.open()
    records = await append_many(writer, 3)
    reader = FileAuditLog(file_backend.path, read_only=True)
    await reader.start()
    assert await reader.read(0, 10) == records
    records.append(await writer.append(event(4)))
    assert await reader.head() == ChainPoint(4, records[-1].hash)
    assert await reader.read(2, 10) == records[2:]
    with pytest.raises(StoreUnavailable, match="read-only"):
        await reader.append(event(5))
    await reader.close()


async def test_a_record_cut_short_by_a_crash_is_dropped_at_start(
    file_backend: FileBackend, caplog: pytest.LogCaptureFixture
) -> None:
    await append_many(await file_backend.open(), 3)
    await file_backend.aclose()
    with file_backend.path.open("a", encoding="utf-8") as file:
        file.write('{"event":{"action":"pla')  # the crash came mid-write: never acknowledged
    log = await file_backend.open()
    assert "unfinished last record" in caplog.text
    assert (await log.append(event(4))).seq == 4
    assert (await verify_log(log)).checked == 4


async def test_an_unreadable_last_record_stops_the_writer(file_backend: FileBackend) -> None:
    await append_many(await file_backend.open(), 3)
    await file_backend.aclose()
    await file_backend.garble(3)
    with pytest.raises(StoreUnavailable, match="unreadable"):
        await file_backend.open()


async def test_a_trim_interrupted_between_its_steps_is_completed_at_start(
    file_backend: FileBackend,
) -> None:
    records = await append_many(await file_backend.open(), 6)
    await file_backend.aclose()
    anchor = {"seq": 2, "hash": records[1].hash}  # the anchor moved, the file was not replaced
    file_backend.path.with_name("audit.jsonl.anchor").write_text(json.dumps(anchor))
    log = await file_backend.open()
    assert await log.read(0, 10) == records[2:]
    assert (await verify_log(log)).ok


async def test_records_are_on_disk_when_the_append_returns(file_backend: FileBackend) -> None:
    log = await file_backend.open()
    records = await append_many(log, 2)
    assert file_backend.lines() == [record.to_json() for record in records]
