"""``expie-gateway audit``: export, verify, trim the audit trail; acknowledge a state loss.

Owns the four sub-commands, registered by ``gateway.cli`` through ``add_audit_commands`` (or
merged from ``AUDIT_HANDLERS``); ``run_audit_command`` runs them without it (tests). It must not
import ``gateway.cli`` (which imports this module): it reads the settings itself, the same way.

- ``export --since WHEN [--until WHEN] [--format jsonl] [--output FILE] [--mark-exported]``:
  the records whose event time is in ``[since, until)``, one JSON line each (the stored form), in
  seq order, up to the head as it was when the export began. ``--mark-exported`` records, once
  the output is on disk, the highest seq up to which *every* record has now been exported, so
  ``trim`` may drop those; records skipped by ``--since``/``--until`` are never marked. It also
  moves the checkpoint (``audit.checkpoint_file``, outside Redis) forward to that record, only
  while the trail continues the checkpoint there (else it stays, and the exit status is 1).
- ``verify``: one JSON object ``{"ok", "checked", "problem", "seq", "checkpoint", "segments",
  "state_loss"}`` (``gateway.core.audit_checkpoint``): the chain, held to the checkpoint, with
  the segments acknowledged losses started and a loss reported but not acknowledged (a failure).
- ``trim [--older-than DURATION]`` (default ``audit.retention_days``): removes records that are
  older AND exported, and only after the trail verifies; prints how many. A file audit log is
  locked by the gateway writing it: stop the gateway to trim it (Redis needs no stop).
- ``acknowledge-loss --reason TEXT``: acknowledge a state loss the replicas reported in Redis
  (``gateway.services.state_loss``); prints the new segment's first record. Redis only.

WHEN is an ISO-8601 time (``2026-11-24T10:00:00Z``; without a zone, UTC) or a duration back from
now (``30m``, ``24h``, ``7d``). Exit status: 0 done; 1 ``verify`` found the chain broken (or
``trim`` refused because of it); 2 the command could not run (configuration, arguments, store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from gateway import __version__
from gateway.auth.credentials import redis_password
from gateway.core.audit_chain import AuditRecord, ChainPoint
from gateway.core.audit_checkpoint import Checkpoint, TrailVerdict, checkpoint_problem
from gateway.core.mapping_reader import ConfigError
from gateway.errors import GatewayError
from gateway.services.audit_trail import verify_log
from gateway.services.call_context import CallContext
from gateway.services.state_loss import acknowledge_loss
from gateway.settings import CONFIG_PATH_VARIABLE, Settings, load_settings
from gateway.stores.audit import AuditLog, open_audit_log
from gateway.stores.checkpoint_file import read_checkpoint, write_checkpoint
from gateway.stores.cluster_epoch import ClusterEpochStore
from gateway.stores.redis_client import connect_redis

OK, BROKEN, FAILED = 0, 1, 2
DEFAULT_CONFIG = Path("config/gateway.yaml")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BATCH = 1000
MAX_REASON = 500

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Trail:
    """The audit log a command works on, and the cluster epoch beside it (None: a file trail,
    which has none)."""

    log: AuditLog
    epochs: ClusterEpochStore | None


Action = Callable[[Trail, Settings, argparse.Namespace], Awaitable[int]]


class AuditCommandError(Exception):
    """The command cannot do what was asked; the message says why."""


def add_audit_commands(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    audit = subparsers.add_parser(
        "audit", help="export, verify or trim the audit trail; acknowledge a state loss")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = with_config(actions.add_parser("export", help="write records as JSON lines"))
    export.add_argument("--since", type=when, required=True, help="ISO-8601 time or 24h, 7d")
    export.add_argument("--until", type=when, default=None, help="(exclusive) as --since")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", type=Path, default=None, help="file (default stdout)")
    export.add_argument("--mark-exported", action="store_true",
                        help="let trim drop what this export wrote out")
    export.set_defaults(func=export_command)
    verify = with_config(actions.add_parser("verify", help="check the hash chain"))
    verify.set_defaults(func=verify_command)
    trim = with_config(actions.add_parser("trim", help="drop old records already exported"))
    trim.add_argument("--older-than", type=duration, default=None,
                      help="30m, 24h, 90d (default audit.retention_days)")
    trim.set_defaults(func=trim_command)
    acknowledge = with_config(actions.add_parser(
        "acknowledge-loss", help="acknowledge that Redis lost the shared state: a new audit "
        "segment; order calls resume"))
    acknowledge.add_argument("--reason", type=reason, required=True,
                             help="what happened and who checked it (audited)")
    acknowledge.set_defaults(func=acknowledge_command)


def run_audit_command(argv: Sequence[str]) -> int:
    """``expie-gateway ARGV`` for ``audit`` command lines (``["audit", "verify", ...]``)."""
    parser = argparse.ArgumentParser(prog="expie-gateway")
    add_audit_commands(parser.add_subparsers(dest="command", required=True), _with_config)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own exit on a bad argument or --help
        return exc.code if isinstance(exc.code, int) else FAILED
    handler: Handler = args.func
    return handler(args)


def when(text: str) -> float:
    """Seconds since the epoch for an ISO-8601 time or a duration back from now."""
    try:
        return time.time() - duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO-8601 time nor a duration like 30m, 24h, 7d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def reason(text: str) -> str:
    if not text.strip() or len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"a reason of 1 to {MAX_REASON} characters")
    return text.strip()


def export_command(args: argparse.Namespace) -> int:
    return _run(args, _export, read_only=True)


def verify_command(args: argparse.Namespace) -> int:
    return _run(args, _verify, read_only=True)


def trim_command(args: argparse.Namespace) -> int:
    return _run(args, _trim, read_only=False)


def acknowledge_command(args: argparse.Namespace) -> int:
    return _run(args, _acknowledge, read_only=False)


AUDIT_HANDLERS: dict[tuple[str, str | None], Handler] = {
    ("audit", "export"): export_command,
    ("audit", "verify"): verify_command,
    ("audit", "trim"): trim_command,
    ("audit", "acknowledge-loss"): acknowledge_command,
}


def _run(args: argparse.Namespace, action: Action, *, read_only: bool) -> int:
    try:
        settings = _settings(args.config)
        return asyncio.run(_with_log(settings, args, action, read_only=read_only))
    except ConfigError as exc:
        print(f"expie-gateway: configuration error: {exc}", file=sys.stderr)
    except (AuditCommandError, GatewayError, OSError, ValueError) as exc:
        print(f"expie-gateway: {exc}", file=sys.stderr)
    return FAILED


def _settings(path: Path) -> Settings:
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    return load_settings(path, os.environ)


async def _with_log(settings: Settings, args: argparse.Namespace, action: Action, *,
                    read_only: bool) -> int:
    url = settings.redis.url if settings.audit_in_redis else None
    if url is None and read_only and not settings.audit.file.exists():
        # Most likely a wrong path or working directory: say so rather than export nothing.
        raise AuditCommandError(f"no audit log at {settings.audit.file} (audit.file)")
    client = connect_redis(url, password=redis_password(settings.redis)) if url else None
    try:
        log = open_audit_log(settings, client, read_only=read_only)
        epochs = None if client is None else ClusterEpochStore(client, settings.redis.key_prefix)
        await log.start()
        try:
            return await action(Trail(log, epochs), settings, args)
        finally:
            await log.close()
    finally:
        if client is not None:
            await client.aclose()


@dataclass(frozen=True, slots=True)
class _Exported:
    written: int
    complete: int  # every record up to this seq has now been exported
    point: ChainPoint | None  # the record at ``complete``, when the export read it
    at_checkpoint: str | None  # the hash of the record at the checkpoint's seq, when read


async def _export(trail: Trail, settings: Settings, args: argparse.Namespace) -> int:
    log = trail.log
    anchor, head, marked = await log.anchor(), await log.head(), await log.exported()
    checkpoint = read_checkpoint(settings.audit.checkpoint_file) if args.mark_exported else None
    out = sys.stdout if args.output is None else args.output.open("w", encoding="utf-8")
    try:
        run = await _write_records(log, out, head.seq, args, marked,
                                   None if checkpoint is None else checkpoint.seq)
        out.flush()
        _sync(out)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {run.written} records", file=sys.stderr)
    if not args.mark_exported:
        return OK
    if run.complete > marked:
        await log.mark_exported(run.complete)
        print(f"marked exported through seq {run.complete}", file=sys.stderr)
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, anchor, head, run.at_checkpoint)
        if problem is not None:
            print(f"expie-gateway: the checkpoint stays at seq {checkpoint.seq}: {problem[0]} "
                  "(see audit verify)", file=sys.stderr)
            return BROKEN
    if run.point is not None and run.point.seq > (0 if checkpoint is None else checkpoint.seq):
        epoch = None if trail.epochs is None else (await trail.epochs.view()).epoch
        path = settings.audit.checkpoint_file
        await asyncio.to_thread(write_checkpoint, path,
                                Checkpoint(run.point.seq, run.point.hash, epoch))
        print(f"checkpoint {path}: seq {run.point.seq}", file=sys.stderr)
    return OK


async def _write_records(log: AuditLog, out: TextIO, through: int, args: argparse.Namespace,
                         marked: int, wanted: int | None) -> _Exported:
    """Write the records in range; how many, and the seq through which every record has now
    been exported (``marked`` extended by an unbroken run of written records)."""
    written, complete, unbroken = 0, marked, True
    point: ChainPoint | None = None
    at_checkpoint: str | None = None
    async for record in _records_through(log, through):
        take = args.since <= record.event.time and (args.until is None
                                                    or record.event.time < args.until)
        if take:
            out.write(f"{record.to_json()}\n")
            written += 1
        if unbroken and record.seq > complete:
            unbroken = take and record.seq == complete + 1
            complete = record.seq if unbroken else complete
        if record.seq == complete:
            point = ChainPoint(record.seq, record.hash)
        if record.seq == wanted:
            at_checkpoint = record.hash
    return _Exported(written, complete, point, at_checkpoint)


async def _records_through(log: AuditLog, through: int) -> AsyncIterator[AuditRecord]:
    cursor = 0
    while True:
        page = await log.read(cursor, _BATCH)
        for record in page:
            if record.seq > through:
                return
            yield record
        if len(page) < _BATCH:
            return
        cursor = max(cursor + 1, page[-1].seq)


def _sync(out: TextIO) -> None:
    """On disk before anything is marked exported (a pipe or terminal cannot be synced)."""
    try:
        os.fsync(out.fileno())
    except OSError:
        if out is not sys.stdout:
            raise


async def _verify(trail: Trail, settings: Settings, args: argparse.Namespace) -> int:
    result = await _verdict(trail, settings)
    print(json.dumps(result.to_wire()))
    return OK if result.ok else BROKEN


async def _verdict(trail: Trail, settings: Settings) -> TrailVerdict:
    """The trail held to the checkpoint and to a loss reported in Redis."""
    checkpoint = await asyncio.to_thread(read_checkpoint, settings.audit.checkpoint_file)
    loss = None if trail.epochs is None else (await trail.epochs.view()).loss
    return await verify_log(trail.log, checkpoint=checkpoint, loss=loss)


async def _trim(trail: Trail, settings: Settings, args: argparse.Namespace) -> int:
    log = trail.log
    older_than = args.older_than or settings.audit.retention_days * 86400
    if older_than <= 0:
        print("trimmed 0 records (retention is off: audit.retention_days is 0; pass "
              "--older-than to trim)")
        return OK
    result = await _verdict(trail, settings)
    if not result.ok:
        print(f"expie-gateway: not trimming, the chain is broken: {result.problem}",
              file=sys.stderr)
        return BROKEN
    removed = await log.trim(time.time() - older_than)
    anchor = await log.anchor()
    print(f"trimmed {removed} records (older than {_span(older_than)} and exported); the trail "
          f"now starts after seq {anchor.seq}")
    return OK


async def _acknowledge(trail: Trail, settings: Settings, args: argparse.Namespace) -> int:
    if trail.epochs is None or not settings.audit_in_redis:
        raise AuditCommandError("acknowledge-loss needs the audit trail in Redis (redis.url): "
                                "a file trail belongs to one process, with no shared state")
    context = CallContext(None, f"cli-{uuid.uuid4().hex}", uuid.uuid4().hex, "cli",
                          f"expie-gateway/{__version__} audit acknowledge-loss")
    record = await acknowledge_loss(trail.epochs, context, args.reason, time.time)
    print(record.to_json())
    print(f"acknowledged: the audit chain goes on at seq {record.seq} after seq "
          f"{record.seq - 1} ({record.prev}); the replicas take orders again within a second",
          file=sys.stderr)
    return OK


def _span(seconds: float) -> str:
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """As ``gateway.cli`` adds ``--config`` (not imported from there: it imports this module)."""
    default = Path(os.environ.get(CONFIG_PATH_VARIABLE, DEFAULT_CONFIG))
    parser.add_argument("--config", type=Path, default=default, help=f"(default {default})")
    return parser
