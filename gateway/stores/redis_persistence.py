"""``redis.require_persistence``: at start, make sure the shared Redis keeps its data on disk.

The audit chain, idempotency keys and order owners live in Redis; a Redis without an append-only
file loses them on every restart. Accepted: ``appendonly yes`` with ``appendfsync always`` or
``everysec``. A server that refuses ``CONFIG GET`` (managed Redis renames or forbids it) cannot be
checked: that is logged as a warning and the gateway starts, as it does when Redis does not answer
at all (an outage at start must not keep every replica down; the epoch watch still catches a
restart that lost the data, see ``gateway.services.state_watch``).
"""

from __future__ import annotations

import logging

import redis.asyncio
from redis.exceptions import ResponseError

from gateway.errors import PersistenceRequired
from gateway.stores.redis_client import REDIS_ERRORS

logger = logging.getLogger(__name__)

SETTING = "redis.require_persistence"
FSYNC_POLICIES = frozenset({"always", "everysec"})


async def require_persistence(client: redis.asyncio.Redis) -> None:
    """Return when Redis persists (or cannot be asked); ``PersistenceRequired`` when it does not."""
    try:
        appendonly = await _config(client, "appendonly")
        fsync = await _config(client, "appendfsync")
    except ResponseError as exc:
        logger.warning("%s: Redis refuses CONFIG GET (%s), so its persistence cannot be checked; "
                       "starting (make sure it runs with an append-only file)", SETTING, exc)
        return
    except REDIS_ERRORS as exc:
        logger.warning("%s: Redis does not answer (%s: %s), so its persistence cannot be checked "
                       "now; starting", SETTING, type(exc).__name__, exc)
        return
    problem = persistence_problem(appendonly, fsync)
    if problem is not None:
        raise PersistenceRequired(
            f"{SETTING}: Redis {problem}, so a restart of it would lose the audit chain, "
            "idempotency keys and order owners; run it with appendonly yes and appendfsync "
            f"everysec (or always), or set {SETTING} false for tests and demos")


def persistence_problem(appendonly: str | None, fsync: str | None) -> str | None:
    """What is wrong with these ``CONFIG GET`` answers; None when Redis persists."""
    if appendonly != "yes":
        return f"keeps no append-only file (appendonly {appendonly or 'unset'})"
    if fsync not in FSYNC_POLICIES:
        return f"leaves fsync to the OS (appendfsync {fsync or 'unset'})"
    return None


async def _config(client: redis.asyncio.Redis, name: str) -> str | None:
    reply = await client.config_get(name)
    for key, value in reply.items():
        if _text(key) == name:
            return _text(value).lower()
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
