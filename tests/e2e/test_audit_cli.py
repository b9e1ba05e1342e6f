"""``expie-gateway audit export|verify|trim`` as an operator runs them, in process.

The commands run through ``run_audit_command`` (the same parser and handlers ``gateway.cli``
registers), against a settings file in ``tmp_path`` naming a file audit log, or the real Redis at
REDIS_URL under the test's key prefix (skipped without Redis, failing under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from gateway.audit_cli import run_audit_command
from gateway.core.audit_chain import AuditEvent, AuditRecord, Kind
from gateway.stores.audit import AuditLog, FileAuditLog, RedisAuditLog
from gateway.stores.redis_client import connect_redis

T0 = datetime(2024, 11, 24, 10, 0, tzinfo=UTC).timestamp()
MINUTE = 60.0


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test's file only, whatever the shell exported."""
    for name in [name for name in os.environ if name.startswith("EXPIE_GW_")]:
        monkeypatch.delenv(name)


def event(number: int, time_: float) -> AuditEvent:
    return AuditEvent(
        kind=Kind.INTENT, action="place", time=time_, request_id=f"req-{number}",
        trace_id="trace", user="demo-trader", token_id="jti", account="desk-alpha",
        client="10.0.0.7", user_agent="desk/1.0", market="BCCBTC",
        params={"side": "buy", "amount": str(number)})


async def append_all(log: AuditLog, times: list[float]) -> list[AuditRecord]:
    await log.start()
    try:
        return [await log.append(event(n, t)) for n, t in enumerate(times, start=1)]
    finally:
        await log.close()


class FileTrail:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "audit.jsonl"
        self.config = directory / "gateway.yaml"
        self.checkpoint = directory / "audit-checkpoint.json"
        self.config.write_text(yaml.safe_dump(
            {"audit": {"backend": "file", "file": str(self.path),
                       "checkpoint_file": str(self.checkpoint)}}), encoding="utf-8")

    def fill(self, times: list[float]) -> list[AuditRecord]:
        return asyncio.run(append_all(FileAuditLog(self.path), times))

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines()

    def rewrite(self, lines: list[str]) -> None:
        self.path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    def run(self, *args: str) -> int:
        return run_audit_command(["audit", *args, "--config", str(self.config)])


@pytest.fixture
def trail(tmp_path: Path) -> FileTrail:
    return FileTrail(tmp_path)


def minutes(*offsets: int) -> list[float]:
    return [T0 + offset * MINUTE for offset in offsets]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def verdict(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out)
    return result


# export


def test_export_writes_exactly_the_records_in_the_window(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = trail.fill(minutes(1, 2, 3, 4, 5, 6, 7))
    output = tmp_path / "export.jsonl"
    status = trail.run("export", "--since", "2024-11-24T10:03:00Z", "--until",
                       "2024-11-24T10:06:00Z", "--output", str(output))
    assert status == 0
    assert output.read_text(encoding="utf-8").splitlines() == [
        record.to_json() for record in records[2:5]]
    assert "exported 3 records" in capsys.readouterr().err


def test_export_since_a_duration_counts_back_from_now(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    records = trail.fill([now - 2 * 86400, now - 3600, now - 60])
    assert trail.run("export", "--since", "24h") == 0
    assert capsys.readouterr().out.splitlines() == [record.to_json() for record in records[1:]]


def test_a_since_that_is_no_time_is_refused(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trail.run("export", "--since", "last tuesday") == 2
    assert "neither an ISO-8601 time nor a duration" in capsys.readouterr().err


def test_a_missing_settings_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_audit_command(["audit", "verify", "--config", str(tmp_path / "nope.yaml")])
    assert status == 2
    assert "configuration error" in capsys.readouterr().err


def test_exporting_a_log_that_is_not_there_is_an_error_not_an_empty_export(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trail.run("export", "--since", "7d") == 2
    assert f"no audit log at {trail.path}" in capsys.readouterr().err


# verify


def test_verify_passes_an_intact_trail(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1, 2, 3, 4))
    assert trail.run("verify") == 0
    assert verdict(capsys.readouterr().out) == {
        "ok": True, "checked": 4, "problem": None, "seq": None, "checkpoint": None,
        "segments": [], "state_loss": None}


def edit(lines: list[str]) -> list[str]:
    data = json.loads(lines[2])
    data["event"]["params"]["amount"] = "1000000"
    return [*lines[:2], json.dumps(data, sort_keys=True, separators=(",", ":")), *lines[3:]]


def delete(lines: list[str]) -> list[str]:
    return [*lines[:2], *lines[3:]]


def swap(lines: list[str]) -> list[str]:
    return [*lines[:2], lines[3], lines[2], *lines[4:]]


@pytest.mark.parametrize(("tamper", "problem"), [
    (edit, "record 3 was edited (its content does not match its hash)"),
    (delete, "record 3 is missing"),
    (swap, "records 3 and 4 are out of order"),
])
def test_verify_names_the_first_tampered_record(
    trail: FileTrail, capsys: pytest.CaptureFixture[str], tamper: object, problem: str
) -> None:
    trail.fill(minutes(1, 2, 3, 4, 5))
    assert callable(tamper)
    trail.rewrite(tamper(trail.lines()))
    assert trail.run("verify") == 1
    assert verdict(capsys.readouterr().out) == {
        "ok": False, "checked": 2, "problem": problem, "seq": 3, "checkpoint": None,
        "segments": [], "state_loss": None}


# the checkpoint


def test_a_marked_export_writes_the_checkpoint_that_verify_holds_the_trail_to(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = trail.fill(minutes(1, 2, 3))
    assert trail.run("export", "--since", "2024-11-24T10:00:00Z", "--output",
                     str(tmp_path / "x.jsonl"), "--mark-exported") == 0
    assert f"checkpoint {trail.checkpoint}: seq 3" in capsys.readouterr().err
    written = {"seq": 3, "hash": records[2].hash, "epoch": None}
    assert json.loads(trail.checkpoint.read_text(encoding="utf-8")) == written
    trail.fill(minutes(4))
    assert trail.run("verify") == 0
    assert verdict(capsys.readouterr().out)["checkpoint"] == written


def test_a_trail_that_started_again_fails_against_the_checkpoint_and_does_not_move_it(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = trail.fill(minutes(1, 2, 3))
    assert trail.run("export", "--since", iso(T0), "--output", str(tmp_path / "x.jsonl"),
                     "--mark-exported") == 0
    for path in tmp_path.glob("audit.jsonl*"):
        path.unlink()  # the trail is gone, and a new one starts from genesis
    trail.fill(minutes(10, 11))
    capsys.readouterr()
    assert trail.run("verify") == 1
    result = verdict(capsys.readouterr().out)
    assert (result["ok"], result["checked"], result["seq"]) == (False, 2, 3)
    assert result["problem"] == (
        f"the audit trail ends at seq 2, before the last exported checkpoint (seq 3, hash "
        f"{records[2].hash}): it restarted or lost its newest records")
    trail.fill(minutes(12, 13))
    assert trail.run("export", "--since", iso(T0), "--output", str(tmp_path / "y.jsonl"),
                     "--mark-exported") == 1
    assert "the checkpoint stays at seq 3: record 3 does not match the last exported " \
        "checkpoint" in capsys.readouterr().err
    assert json.loads(trail.checkpoint.read_text(encoding="utf-8"))["hash"] == records[2].hash


def test_a_checkpoint_file_that_is_not_one_is_named(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1))
    trail.checkpoint.write_text('{"seq": 1}', encoding="utf-8")
    assert trail.run("verify") == 2
    assert f"{trail.checkpoint} (audit.checkpoint_file): not a checkpoint" in \
        capsys.readouterr().err


def test_acknowledging_a_loss_needs_the_trail_in_redis(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1))
    assert trail.run("acknowledge-loss", "--reason", "checked") == 2
    assert "acknowledge-loss needs the audit trail in Redis" in capsys.readouterr().err


# trim


def test_trim_keeps_records_never_exported(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1, 2, 3))
    before = trail.lines()
    assert trail.run("export", "--since", "7d", "--output", str(tmp_path / "x.jsonl")) == 0
    assert trail.run("trim", "--older-than", "1s") == 0
    assert "trimmed 0 records" in capsys.readouterr().out
    assert trail.lines() == before


def test_trim_drops_what_an_export_marked_and_the_rest_still_verifies(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = trail.fill(minutes(1, 2, 3))
    output = tmp_path / "x.jsonl"
    assert trail.run("export", "--since", "2024-11-24T10:00:00Z", "--until",
                     "2024-11-24T10:02:30Z", "--output", str(output), "--mark-exported") == 0
    assert "marked exported through seq 2" in capsys.readouterr().err
    assert trail.run("trim", "--older-than", "1s") == 0
    assert "trimmed 2 records" in capsys.readouterr().out
    assert trail.lines() == [records[2].to_json()]
    assert trail.run("verify") == 0
    assert verdict(capsys.readouterr().out)["checked"] == 1


def test_an_export_that_skipped_older_records_marks_nothing(
    trail: FileTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1, 2, 3))
    assert trail.run("export", "--since", "2024-11-24T10:02:00Z", "--output",
                     str(tmp_path / "x.jsonl"), "--mark-exported") == 0
    assert "marked exported" not in capsys.readouterr().err
    assert trail.run("trim", "--older-than", "1s") == 0
    assert "trimmed 0 records" in capsys.readouterr().out


def test_trim_waits_for_the_gateway_to_release_a_file_log(
    trail: FileTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.fill(minutes(1))
    gateway = FileAuditLog(trail.path)
    asyncio.run(gateway.start())
    try:
        assert trail.run("trim", "--older-than", "1s") == 2
        assert "in use by another writer" in capsys.readouterr().err
        assert trail.run("verify") == 0  # reading beside the writer is fine
    finally:
        asyncio.run(gateway.close())


# Redis


@pytest.mark.redis
def test_export_and_verify_read_the_trail_in_redis(
    tmp_path: Path, redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> list[AuditRecord]:
        client = connect_redis(redis_url)
        try:
            return await append_all(RedisAuditLog(client, key_prefix), minutes(1, 2, 3))
        finally:
            await client.aclose()
    records = asyncio.run(fill())
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "audit": {"checkpoint_file": str(tmp_path / "audit-checkpoint.json")}}), encoding="utf-8")
    assert run_audit_command(["audit", "verify", "--config", str(config)]) == 0
    assert verdict(capsys.readouterr().out)["checked"] == 3
    assert run_audit_command(["audit", "export", "--since", "2024-11-24T10:02:00Z",
                              "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [r.to_json() for r in records[1:]]
