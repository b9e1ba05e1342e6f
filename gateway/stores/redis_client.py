"""The one way the gateway builds a Redis client, and the small helpers every Redis store shares.

Owns the connection pool settings (a ``BlockingConnectionPool``: past ``max_connections`` callers
wait up to ``timeout`` instead of failing), the timeouts and the retry policy; which errors count
as "Redis failed" (``REDIS_ERRORS``) and their translation into ``StoreUnavailable`` at the store
edge (``translating_errors``); durations in the milliseconds Redis expiries take
(``milliseconds``). Responses are ``bytes`` (``decode_responses=False``) in every store: each
store decodes what it reads. This module does not own the client's lifetime: whoever calls
``connect_redis`` closes the client (``await client.aclose()``), which also closes its pool.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.auth.secret import Secret
from gateway.errors import StoreUnavailable

REDIS_ERRORS = (RedisError, OSError)
"""What a failed Redis call raises (a socket timeout is an ``OSError``)."""


def connect_redis(
    url: str, max_connections: int = 64, *, timeout: float = 2.0, password: Secret | None = None
) -> redis.asyncio.Redis:
    """A client for ``url`` (no I/O yet: connections open on first use), with ``password`` when
    it is kept apart from the URL.

    ``timeout`` bounds the wait for a pooled connection, the TCP connect and each reply, so a
    hung Redis shows as an error within seconds, never as a request that waits forever. One
    immediate retry covers a pooled connection that went stale when Redis restarted.
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
        **({"password": password.reveal()} if password is not None else {}),
    )
    return redis.asyncio.Redis.from_pool(pool)


async def ping_redis(client: redis.asyncio.Redis) -> bool:
    """True when Redis answers a PING; False on any Redis or socket error (for readiness)."""
    try:
        return bool(await client.ping())
    except REDIS_ERRORS:
        return False


def milliseconds(seconds: float) -> int:
    """``seconds`` for ``PX`` / ``PEXPIRE``: rounded up, and at least 1 (Redis refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


@contextlib.contextmanager
def translating_errors(
    message: str, code: str | None = None, *, name_cause: bool = False
) -> Iterator[None]:
    """Raise ``StoreUnavailable(message, code=code)`` from a Redis or socket error in the block.

    ``code`` None keeps ``StoreUnavailable``'s own code; ``name_cause`` appends the failure's
    type to the message, e.g. ``(ConnectionError)``.
    """
    try:
        yield
    except REDIS_ERRORS as exc:
        text = f"{message} ({type(exc).__name__})" if name_cause else message
        raise StoreUnavailable(text, code=code) from exc
