"""Order ownership: which gateway user placed which order of a shared upstream account.

Owns the ``OwnershipStore`` protocol and two implementations: ``MemoryOwnershipStore`` (the
single-process embedded default, bounded: the oldest records are forgotten first) and
``RedisOwnershipStore`` (shared by every replica, each record kept ``ttl`` seconds). An order
placed outside the gateway, or whose record was forgotten, has no owner (``None``).

This module does not decide who may see an order (the order desk filters with the owners it
reads), never talks to the exchange, and does not own the Redis client (whoever built it closes
it).

Redis layout:

- ``{prefix}owner:{account}:{order_id}``  string: the user id; ``SET … PX ttl``. The order id
  is an integer, so the last ``:`` ends the account whatever the account's name holds.
  ``owners`` reads any number of orders in one ``MGET``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import redis.asyncio

from gateway.stores.redis_client import milliseconds, translating_errors

_CODE = "ownership_unavailable"


class OwnershipStore(Protocol):
    async def record(self, account: str, order_id: int, user: str) -> None:
        """Remember that ``user`` placed order ``order_id`` of ``account`` (replacing any
        earlier record of that order). Raises ``StoreUnavailable``."""

    async def owners(self, account: str, order_ids: Sequence[int]) -> list[str | None]:
        """The owner of each order, in the order of ``order_ids``; ``None`` where unknown.
        Raises ``StoreUnavailable``."""

    async def close(self) -> None:
        """Release what the store holds itself (never the Redis client it was given)."""


class MemoryOwnershipStore:
    """The single-process store: records in write order, the oldest forgotten for room."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._owners: OrderedDict[tuple[str, int], str] = OrderedDict()

    async def record(self, account: str, order_id: int, user: str) -> None:
        self._owners[(account, order_id)] = user
        self._owners.move_to_end((account, order_id))
        while len(self._owners) > self._max:
            self._owners.popitem(last=False)

    async def owners(self, account: str, order_ids: Sequence[int]) -> list[str | None]:
        return [self._owners.get((account, order_id)) for order_id in order_ids]

    async def close(self) -> None:
        return None

    @property
    def entries(self) -> int:
        """Records held (a gauge)."""
        return len(self._owners)


class RedisOwnershipStore:
    """Records shared through Redis by every replica (layout: the module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str, ttl: float) -> None:
        if not 0 < ttl < math.inf:
            raise ValueError(f"ttl must be a positive finite number of seconds, not {ttl!r}")
        self._client = client
        self._prefix = f"{prefix}owner:"
        self._ttl_ms = milliseconds(ttl)

    async def record(self, account: str, order_id: int, user: str) -> None:
        with _unavailable():
            await self._client.set(self._name(account, order_id), user, px=self._ttl_ms)

    async def owners(self, account: str, order_ids: Sequence[int]) -> list[str | None]:
        if not order_ids:
            return []  # MGET with no keys is an error
        with _unavailable():
            raw = await self._client.mget([self._name(account, oid) for oid in order_ids])
        # A hand-edited value that is not UTF-8 matches no user: that order is nobody's.
        return [value.decode(errors="replace") if isinstance(value, bytes) else None
                for value in raw]

    async def close(self) -> None:
        return None  # the client belongs to whoever built it

    def _name(self, account: str, order_id: int) -> str:
        return f"{self._prefix}{account}:{int(order_id)}"


def _unavailable() -> AbstractContextManager[None]:
    return translating_errors("the ownership store (Redis) is unavailable", _CODE)
