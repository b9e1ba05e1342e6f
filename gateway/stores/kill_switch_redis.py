"""The kill switches shared by every replica through Redis, checked against a local mirror.

What a switch is, the ``KillSwitchStore`` protocol and the fail-closed rules are in
``gateway.stores.kill_switch``. This module only keeps the mirror in step with Redis (the sync
machinery itself is ``gateway.stores.redis_mirror``'s).

Redis layout (every change is one Lua script, atomic with its version bump):

- ``{prefix}killswitch``          hash: field ``{scope}:{target}``, value the switch's wire JSON
- ``{prefix}killswitch:version``  integer, INCRemented by every change
"""

from __future__ import annotations

import json
import logging
import math

import redis.asyncio
from redis.exceptions import ResponseError

from gateway.stores.kill_switch import UNAVAILABLE, KillSwitch, SwitchScope, SwitchView
from gateway.stores.redis_mirror import MirrorLabels, RedisMirror, as_version

logger = logging.getLogger(__name__)
_LABELS = MirrorLabels(logger, name="kill switch store", held="switches",
                       task="kill-switch-sync", code=UNAVAILABLE)

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
        keys = [f"{prefix}killswitch", f"{prefix}killswitch:version"]
        self._sync = RedisMirror(
            client, keys=keys, version_key=keys[1], interval=sync_interval,
            scripts={"engage": _ENGAGE, "release": _RELEASE, "snapshot": _SNAPSHOT},
            load=self._load, labels=_LABELS)

    async def start(self) -> None:
        await self._sync.start()

    async def close(self) -> None:
        await self._sync.close()

    @property
    def healthy(self) -> bool:
        return self._sync.healthy

    async def engage(self, switch: KillSwitch) -> None:
        field = _field(switch.scope, switch.target)
        wire = json.dumps(switch.to_wire(), separators=(",", ":"))
        async with self._sync.lock:
            await self._sync.change("engage", [field, wire], _version_and)
            self._switches = {**self._switches, (switch.scope, switch.target): switch}

    async def release(self, scope: SwitchScope, target: str) -> KillSwitch | None:
        async with self._sync.lock:
            old = await self._sync.change("release", [_field(scope, target)], _version_and)
            self._switches = {k: s for k, s in self._switches.items() if k != (scope, target)}
        return _released(old)

    async def _load(self) -> int:
        reply = await self._sync.run("snapshot")
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], list):
            raise ResponseError("unexpected reply from the kill switch snapshot script")
        version = as_version(reply[0])
        self._set([_decode_switch(raw) for raw in reply[1][1::2]])
        return version


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
        return as_version(reply[0]), reply[1]
    raise ResponseError("unexpected reply from a kill switch script")

