"""A Redis that accepts connections but never answers is an outage, not a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.errors import StoreUnavailable
from gateway.stores.ownership import RedisOwnershipStore
from gateway.stores.redis_client import connect_redis, ping_redis


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A loopback server that reads what it is sent and never replies."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()
    await server.wait_closed()


async def test_a_store_call_to_a_silent_redis_fails_as_unavailable(silent_redis: str) -> None:
    client = connect_redis(silent_redis, timeout=0.5)
    try:
        store = RedisOwnershipStore(client, "test:", ttl=60)
        with pytest.raises(StoreUnavailable) as caught:
            await store.owners("desk-alpha", [1, 2])
        assert caught.value.code == "ownership_unavailable"
        assert not await ping_redis(client)
    finally:
        await client.aclose()
