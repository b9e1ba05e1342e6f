"""Kill switches: stop placing orders for the whole desk, one upstream account, or one user.

Owns the ``KillSwitch`` record (and its wire form), the ``KillSwitchStore`` protocol and two
implementations: ``MemoryKillSwitchStore`` (the embedded default; with a ``state_file`` every
change is written atomically and loaded at ``start``, so a switch survives a restart) and
``RedisKillSwitchStore`` (shared by every replica, in ``gateway.stores.kill_switch_redis``). The
check, ``blocking``, runs on every placement: it is synchronous and does no I/O. The Redis store
answers from a local mirror that a background task keeps in step (polling a version counter every
``sync_interval``, so every replica sees a change within one second); ``engage``/``release``
update the mirror at once.

Fail closed: until a store has loaded its state once (Redis unreachable since start),
``blocking`` and ``engaged`` raise ``StoreUnavailable`` rather than answer "no switch". A failed
sync later keeps the last known state: it never clears a switch. A state file that cannot be
read or parsed stops ``start`` with ``ConfigError`` naming the file (an operator must repair or
remove it: removing it releases every switch).

This module does not decide who may engage a switch, what is refused (the order desk refuses
placements, never cancels), or own the Redis client (whoever built it closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from gateway.core.mapping_reader import ConfigError
from gateway.errors import StoreUnavailable

logger = logging.getLogger(__name__)

UNAVAILABLE = "kill_switch_unavailable"
_FILE_VERSION = 1


class SwitchScope(StrEnum):
    DESK = "desk"
    ACCOUNT = "account"
    USER = "user"


@dataclass(frozen=True, slots=True)
class KillSwitch:
    scope: SwitchScope
    target: str  # "" for the desk; the account name or the user id otherwise
    reason: str
    set_by: str  # user id of who engaged it
    set_at: float  # wall clock

    def __post_init__(self) -> None:
        if (self.scope is SwitchScope.DESK) != (self.target == ""):
            raise ValueError("a desk switch has no target; an account or user switch needs one")
        if not math.isfinite(self.set_at):
            raise ValueError("set_at must be a finite number")

    def to_wire(self) -> dict[str, object]:
        return {"scope": self.scope.value, "target": self.target, "reason": self.reason,
                "set_by": self.set_by, "set_at": self.set_at}

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> KillSwitch:
        """The switch ``to_wire`` described; ``ValueError`` naming what is wrong otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError("a kill switch must be an object")  # noqa: TRY004 - one error type
        return cls(SwitchScope(_wire_text(data, "scope")), _wire_text(data, "target"),
                   _wire_text(data, "reason"), _wire_text(data, "set_by"), _wire_time(data))


def _wire_text(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if isinstance(value, str):
        return value
    raise ValueError(f"kill switch {name}: expected a string")


def _wire_time(data: Mapping[str, object]) -> float:
    value = data.get("set_at")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError("kill switch set_at: expected a number")


_Key = tuple[SwitchScope, str]


class KillSwitchStore(Protocol):
    async def start(self) -> None:
        """Load the state (Redis: and start keeping it in step). Raises ``ConfigError`` for an
        unreadable state file; a Redis store does not raise: it retries in the background."""

    async def close(self) -> None:
        """Stop syncing; the state stays readable."""

    @property
    def healthy(self) -> bool:
        """False while the shared state cannot be reached (for ``/readyz``)."""

    def blocking(self, account: str, user: str) -> KillSwitch | None:
        """The switch that stops ``user`` of ``account`` placing orders: desk first, then the
        account, then the user. Synchronous, no I/O. Raises ``StoreUnavailable`` until the state
        has been loaded once (fail closed)."""

    def engaged(self) -> list[KillSwitch]:
        """Every engaged switch, by ``set_at``. Raises ``StoreUnavailable`` as ``blocking``."""

    async def engage(self, switch: KillSwitch) -> None:
        """Engage ``switch``, replacing one of the same scope and target; visible here at once.
        Raises ``StoreUnavailable`` (nothing changed)."""

    async def release(self, scope: SwitchScope, target: str) -> KillSwitch | None:
        """Release the switch of ``scope`` and ``target``: the released one, or None if none was
        engaged. Raises ``StoreUnavailable`` (nothing changed)."""


class SwitchView:
    """What both stores answer from: the switches in process, and whether they were loaded."""

    def __init__(self, loaded: bool) -> None:
        self._switches: dict[_Key, KillSwitch] = {}
        self._loaded = loaded

    def blocking(self, account: str, user: str) -> KillSwitch | None:
        switches = self._checked()
        return (switches.get((SwitchScope.DESK, ""))
                or switches.get((SwitchScope.ACCOUNT, account))
                or switches.get((SwitchScope.USER, user)))

    def engaged(self) -> list[KillSwitch]:
        return sorted(self._checked().values(), key=lambda switch: switch.set_at)

    def _checked(self) -> dict[_Key, KillSwitch]:
        if not self._loaded:
            raise StoreUnavailable("the kill switch state has not been loaded yet; placing "
                                   "orders is refused until it is", code=UNAVAILABLE)
        return self._switches

    def _set(self, switches: list[KillSwitch]) -> None:
        self._switches = {(switch.scope, switch.target): switch for switch in switches}
        self._loaded = True


# --- memory, with an optional state file ---------------------------------------------------------


class MemoryKillSwitchStore(SwitchView):
    """The embedded store: switches in a dict, written to ``state_file`` (if any) on every change.

    ``start`` writes an empty state file when there is none, so a path that cannot be written
    stops start-up, not the first emergency ``engage``.
    """

    def __init__(self, state_file: Path | None = None) -> None:
        super().__init__(loaded=state_file is None)
        self._file = state_file
        self._lock = asyncio.Lock()  # one change (and its file write) at a time, in order

    async def start(self) -> None:
        async with self._lock:
            await self._load()

    async def close(self) -> None:
        return None  # every change is already on disk

    @property
    def healthy(self) -> bool:
        return self._loaded

    async def engage(self, switch: KillSwitch) -> None:
        async with self._lock:
            await self._load()
            key = (switch.scope, switch.target)
            await self._save([s for k, s in self._switches.items() if k != key] + [switch])

    async def release(self, scope: SwitchScope, target: str) -> KillSwitch | None:
        async with self._lock:
            await self._load()
            released = self._switches.get((scope, target))
            if released is not None:
                await self._save([s for s in self._switches.values() if s is not released])
            return released

    async def _load(self) -> None:
        if not self._loaded and self._file is not None:
            self._set(await asyncio.to_thread(read_state, self._file))

    async def _save(self, switches: list[KillSwitch]) -> None:
        if self._file is not None:
            try:
                await asyncio.to_thread(write_state, self._file, switches)
            except OSError as exc:
                raise StoreUnavailable(f"cannot write the kill switch state file {self._file}: "
                                       f"{exc.strerror or exc}", code=UNAVAILABLE) from exc
        self._set(switches)


def read_state(path: Path) -> list[KillSwitch]:
    """The switches saved in ``path``; a missing file is written empty. Raises ``ConfigError``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the kill switch state: {exc}") from exc
    if raw is None:
        try:
            write_state(path, [])
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the kill switch state: {exc}") from exc
        return []
    try:
        return _decode_state(json.loads(raw))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise ConfigError(f"{path}: not a readable kill switch state ({exc}); repair it, or "
                          "remove it to release every switch") from exc


def _decode_state(data: object) -> list[KillSwitch]:
    if not isinstance(data, dict) or data.get("version") != _FILE_VERSION:
        raise ValueError(f"expected an object with version {_FILE_VERSION}")
    switches = data.get("switches")
    if not isinstance(switches, list):
        raise ValueError("switches: expected a list")  # noqa: TRY004 - one error type
    return [KillSwitch.from_wire(item) for item in switches]


def write_state(path: Path, switches: list[KillSwitch]) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename): a crash leaves the old state
    or the new one, never half of one. Raises ``OSError``."""
    data = {"version": _FILE_VERSION, "switches": [switch.to_wire() for switch in switches]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(json.dumps(data, indent=2).encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # the rename itself survives a crash once its directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
