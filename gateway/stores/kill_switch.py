"""Kill switches: stop placing orders for the whole desk, one upstream account, or one user.

Owns the ``KillSwitch`` record (and its wire form), the ``KillSwitchStore`` protocol and two
implementations: ``MemoryKillSwitchStore`` (the embedded default; with a ``state_file`` every
change is written atomically and loaded at ``start``, so a switch survives a restart) and
``RedisKillSwitchStore`` (shared by every replica). The check, ``blocking``, runs on every
placement: it is synchronous and does no I/O. The Redis store answers from a local mirror that a
background task keeps in step (polling a version counter every ``sync_interval``, so every
replica sees a change within one second); ``engage``/``release`` update the mirror at once.

Fail closed: until a store has loaded its state once (Redis unreachable since start),
``blocking`` and ``engaged`` raise ``StoreUnavailable`` rather than answer "no switch". A failed
sync later keeps the last known state: it never clears a switch. A state file that cannot be
read or parsed stops ``start`` with ``ConfigError`` naming the file (an operator must repair or
remove it: removing it releases every switch).

This module does not decide who may engage a switch, what is refused (the order desk refuses
placements, never cancels), or own the Redis client (whoever built it closes it).

Redis layout (every change is one Lua script, atomic with its version bump):

- ``{prefix}killswitch``          hash: field ``{scope}:{target}``, value the switch's wire JSON
- ``{prefix}killswitch:version``  integer, INCRemented by every change
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

import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from gateway.core.mapping_reader import ConfigError
from gateway.errors import StoreUnavailable

logger = logging.getLogger(__name__)

_CODE = "kill_switch_unavailable"
_MAX_BACKOFF = 1.0
# A full reload now and then, even when the version looks unchanged: covers a Redis that lost its
# data and counted back up to the same version between two polls, or an entry edited by hand.
_FULL_RELOAD_INTERVAL = 30.0
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


class _View:
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
                                   "orders is refused until it is", code=_CODE)
        return self._switches

    def _set(self, switches: list[KillSwitch]) -> None:
        self._switches = {(switch.scope, switch.target): switch for switch in switches}
        self._loaded = True


# --- memory, with an optional state file ---------------------------------------------------------


class MemoryKillSwitchStore(_View):
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
                                       f"{exc.strerror or exc}", code=_CODE) from exc
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


# --- Redis -------------------------------------------------------------------------------------

# KEYS: hash, version. ARGV: field, JSON. Reply: {version, nil}, as _RELEASE's.
_ENGAGE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {redis.call('INCR', KEYS[2]), false}
"""
# KEYS: hash, version. ARGV: field. Reply: {version, released JSON or nil}.
_RELEASE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return {redis.call('GET', KEYS[2]) or '0', false}
end
redis.call('HDEL', KEYS[1], ARGV[1])
return {redis.call('INCR', KEYS[2]), old}
"""
_SNAPSHOT = """
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""


class RedisKillSwitchStore(_View):
    """Switches shared through Redis, checked against a local mirror kept in step.

    ``start`` loads the mirror and starts the sync task; if Redis cannot be reached then, it
    logs, reports ``healthy`` False, fails closed (see the module docstring) and keeps retrying.
    Sync failures keep the last mirror and retry with backoff (at most ``max(sync_interval,
    1 s)`` apart); a change that cannot reach Redis raises ``StoreUnavailable`` and changes
    nothing locally.
    """

    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, sync_interval: float = 0.25
    ) -> None:
        if not 0 < sync_interval < math.inf:
            raise ValueError("sync_interval must be a positive finite number of seconds")
        super().__init__(loaded=False)
        self._client = client
        self._keys = [f"{prefix}killswitch", f"{prefix}killswitch:version"]
        self._interval = sync_interval
        self._scripts = {name: client.register_script(text) for name, text in (
            ("engage", _ENGAGE), ("release", _RELEASE), ("snapshot", _SNAPSHOT))}
        self._version = -1  # unknown: the first sync loads
        self._reload_due = 0.0  # event-loop time of the next unconditional reload
        self._lock = asyncio.Lock()  # orders reloads and local updates as Redis ordered them
        self._healthy = False
        self._outage = False  # an outage is logged once, when it starts
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closing = False
        await self._sync_step(self._interval)
        self._task = asyncio.create_task(self._sync_loop(), name="kill-switch-sync")
        self._task.add_done_callback(self._sync_ended)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # On Python 3.11 redis-py can swallow a cancellation that lands as a reply arrives: the
        # loop then stops at its next check of ``_closing``, so this wait still ends.
        self._closing = True
        task.cancel()
        await asyncio.wait([task])

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def engage(self, switch: KillSwitch) -> None:
        wire = json.dumps(switch.to_wire(), separators=(",", ":"))
        async with self._lock:
            version, _ = await self._change("engage", _field(switch.scope, switch.target), wire)
            self._switches = {**self._switches, (switch.scope, switch.target): switch}
            self._applied(version)

    async def release(self, scope: SwitchScope, target: str) -> KillSwitch | None:
        async with self._lock:
            version, old = await self._change("release", _field(scope, target))
            self._switches = {k: s for k, s in self._switches.items() if k != (scope, target)}
            self._applied(version)
        return _released(old)

    async def _change(self, script: str, *args: str) -> tuple[int, object]:
        """Run a change script: the version it left, and the switch it replaced or removed."""
        try:
            return _version_and(await self._scripts[script](keys=self._keys, args=list(args)))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise StoreUnavailable("the kill switch store (Redis) is unavailable",
                                   code=_CODE) from exc

    def _applied(self, version: int) -> None:
        if version == self._version + 1:  # nobody else changed it: no reload needed
            self._version = version

    async def _sync_loop(self) -> None:
        delay = self._interval
        while not self._closing:
            await asyncio.sleep(delay)
            delay = await self._sync_step(delay)

    async def _sync_step(self, delay: float) -> float:
        """One sync; returns how long to wait before the next one."""
        try:
            async with self._lock:
                await self._sync_once()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return min(delay * 2, max(self._interval, _MAX_BACKOFF))
        self._recovered()
        return self._interval

    async def _sync_once(self) -> None:
        raw = await self._client.get(self._keys[1])
        due = asyncio.get_running_loop().time() >= self._reload_due
        if due or _as_int(raw or 0) != self._version:
            await self._reload()

    async def _reload(self) -> None:
        reply = await self._scripts["snapshot"](keys=self._keys)
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], list):
            raise ResponseError("unexpected reply from the kill switch snapshot script")
        self._set([_decode_switch(raw) for raw in reply[1][1::2]])
        self._version = _as_int(reply[0])
        self._reload_due = asyncio.get_running_loop().time() + _FULL_RELOAD_INTERVAL

    def _failed(self, exc: BaseException) -> None:
        if not self._outage:
            logger.warning("kill switch store: Redis unreachable or unreadable (%s: %s); serving "
                           "the last known switches and retrying", type(exc).__name__, exc)
        self._outage, self._healthy = True, False

    def _recovered(self) -> None:
        if self._outage:
            logger.info("kill switch store: Redis reachable again, in step")
        self._outage, self._healthy = False, True

    def _sync_ended(self, task: asyncio.Task[None]) -> None:
        # Only a bug ends the loop early; say so, and stop claiming to be in step.
        if not task.cancelled() and task.exception() is not None:
            logger.error("kill switch store: sync stopped", exc_info=task.exception())
            self._healthy = False


def _field(scope: SwitchScope, target: str) -> str:
    return f"{scope.value}:{target}"  # the scope holds no ':', so the first one ends it


def _decode_switch(raw: object) -> KillSwitch:
    """A switch from its JSON; ``ResponseError`` (a sync failure: the last state is kept)."""
    try:
        if not isinstance(raw, bytes):
            raise ValueError("not a string")  # noqa: TRY004, TRY301 - one error type
        return KillSwitch.from_wire(json.loads(raw))
    except ValueError as exc:
        raise ResponseError(f"an unreadable kill switch in Redis: {exc}") from exc


def _released(raw: object) -> KillSwitch | None:
    if raw is None:
        return None
    try:
        return _decode_switch(raw)
    except ResponseError:
        logger.warning("kill switch store: released an unreadable switch: %r", raw)
        return None


def _version_and(reply: object) -> tuple[int, object]:
    if isinstance(reply, list) and len(reply) == 2:
        return _as_int(reply[0]), reply[1]
    raise ResponseError("unexpected reply from a kill switch script")


def _as_int(reply: object) -> int:
    with contextlib.suppress(ValueError):
        if isinstance(reply, int | bytes | str):
            return int(reply)
    raise ResponseError(f"unexpected reply from Redis for the kill switch: {reply!r:.40}")
