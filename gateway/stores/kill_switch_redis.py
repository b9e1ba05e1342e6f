"""The kill switches shared by every replica through Redis, checked against a local mirror.

What a switch is, the ``KillSwitchStore`` protocol and the fail-closed rules are in
``gateway.stores.kill_switch``. This module only keeps the mirror in step with Redis.

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

import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from gateway.errors import StoreUnavailable
from gateway.stores.kill_switch import UNAVAILABLE, KillSwitch, SwitchScope, SwitchView

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 1.0
# A full reload now and then, even when the version looks unchanged: covers a Redis that lost its
# data and counted back up to the same version between two polls, or an entry edited by hand.
_FULL_RELOAD_INTERVAL = 30.0

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


class RedisKillSwitchStore(SwitchView):
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
                                   code=UNAVAILABLE) from exc

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
