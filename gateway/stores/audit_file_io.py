"""File mechanics under ``FileAuditLog``: the line index, the tail, side files, the writer lock.

Owns the blocking file operations (callers run them in worker threads): finding where a line
starts without reading the whole file each time, finding the last complete line, writing a small
file atomically (temporary file, fsync, rename, fsync of the directory), and the exclusive
``flock`` that keeps a second process from writing. It knows nothing about records or the chain.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from gateway.errors import StoreUnavailable

UNAVAILABLE = "audit_unavailable"
STRIDE = 1024  # one remembered line offset per this many lines: little memory for big files
CHUNK = 1 << 20
MODE = 0o640  # audit records name users and client addresses: not for every local account


class LineIndex:
    """Where every ``STRIDE``-th line of one version of the file starts."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, identity: tuple[int, int] | None) -> None:
        self.identity = identity
        self.starts, self.lines, self.end = [0], 0, 0

    def count(self, file: BinaryIO, identity: tuple[int, int], size: int) -> int:
        """Complete lines in the first ``size`` bytes, indexing what is new since last time."""
        if identity != self.identity or self.end > size:  # replaced by a trim, or cut back
            self.reset(identity)
        position = self.end
        while position < size:
            chunk = os.pread(file.fileno(), min(CHUNK, size - position), position)
            if not chunk:
                break
            newline = chunk.find(b"\n")
            while newline != -1:
                self.lines, self.end = self.lines + 1, position + newline + 1
                if self.lines % STRIDE == 0:
                    self.starts.append(self.end)
                newline = chunk.find(b"\n", newline + 1)
            position += len(chunk)
        return self.lines

    def seek(self, file: BinaryIO, line: int) -> None:
        file.seek(self.starts[line // STRIDE])
        for _ in range(line % STRIDE):
            file.readline()


def lock_exclusively(lock_path: Path, path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreUnavailable(f"the audit log {path} is in use by another writer (its lock "
                               f"{lock_path} is held)", code=UNAVAILABLE) from None
    return fd


def tail(fd: int, size: int) -> tuple[int, bytes | None]:
    """The offset just after the last newline, and the last complete line (None: none)."""
    data, start = b"", size
    while True:
        last = data.rfind(b"\n")
        if last != -1:
            before = data.rfind(b"\n", 0, last)
            if before != -1 or start == 0:
                return start + last + 1, data[before + 1:last]
        elif start == 0:
            return 0, None
        step = min(65536, start)
        start -= step
        data = os.pread(fd, step, start) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_from(fd: int, offset: int, end: int, target: Path) -> None:
    with target.open("wb") as out:
        while offset < end:
            chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            if not chunk:
                break
            out.write(chunk)
            offset += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(target, MODE)


def write_atomic(path: Path, text: str) -> None:
    temporary = beside(path, f".{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def read_side_file(path: Path) -> tuple[int, str | None] | None:
    """``(seq, hash)`` from a side file; None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot read {path}: {exc}", code=UNAVAILABLE) from exc
    seq, hash_ = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if not isinstance(seq, int) or not isinstance(hash_, str | None):
        raise StoreUnavailable(f"cannot read {path}: not an audit side file", code=UNAVAILABLE)
    return seq, hash_


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


