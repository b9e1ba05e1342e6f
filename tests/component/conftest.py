"""Component-tier fixtures: the real Redis at REDIS_URL, a key prefix per test, a relay to cut it.

A test that needs Redis asks for ``redis_client`` (and ``key_prefix``) and carries the ``redis``
marker. When Redis does not answer, it FAILS under ``CI=true`` and is skipped elsewhere, with a
message saying how to get one. Tests never FLUSHDB: each writes only under its own prefix, and
every key under it is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio

from gateway.stores.redis_client import connect_redis, ping_redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_DELETE_BATCH = 500


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the real Redis, answering PING; fails under CI=true when there is none."""
    client = connect_redis(redis_url)
    try:
        if not await ping_redis(client):
            _redis_missing(redis_url)
        yield client
    finally:
        await client.aclose()


def _redis_missing(url: str) -> None:
    message = (f"Redis does not answer at {_without_password(url)}: run scripts/ensure-redis.sh "
               "(what `make test` does) or point REDIS_URL at one")
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@pytest.fixture
async def key_prefix(redis_client: redis.asyncio.Redis) -> AsyncIterator[str]:
    """A prefix no other test uses; every key under it is deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    await delete_prefixed(redis_client, prefix)


async def delete_prefixed(client: redis.asyncio.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=_DELETE_BATCH):
        batch.append(key)
        if len(batch) >= _DELETE_BATCH:
            await client.delete(*batch)
            batch.clear()
    if batch:
        await client.delete(*batch)


class TcpRelay:
    """A loopback TCP relay in front of Redis: ``stop()`` is an outage, ``start()`` the recovery.

    While stopped, nothing listens on ``port`` and every relayed connection is closed.
    """

    def __init__(self, redis_url: str, port: int) -> None:
        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = port
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        self.url = urlunsplit(parts._replace(netloc=netloc))
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = asyncio.current_task()
        assert pipe is not None
        self._pipes.add(pipe)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
            finally:
                await _close(up_writer)
        finally:
            await _close(writer)
            self._pipes.discard(pipe)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@pytest.fixture
async def redis_relay(
    redis_client: redis.asyncio.Redis, redis_url: str, unused_tcp_port: int
) -> AsyncIterator[TcpRelay]:
    """A started relay to the real Redis (connect to ``relay.url``), stopped after the test."""
    relay = TcpRelay(redis_url, unused_tcp_port)
    await relay.start()
    yield relay
    await relay.stop()
