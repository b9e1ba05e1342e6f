"""Guessing client secrets is slow and cannot starve the gateway.

Failed sign-ins (``POST /auth/token``) are counted per client id and per source address; past a
few, each further one doubles the wait (``gateway.core.backoff``), answered 429 with
``Retry-After`` before any secret is checked; a success resets the client id (not the address, or
one good secret would clear the way for guesses at others). The counts are in Redis when it is
configured (replicas share one budget), else in this process; should Redis fail, this process's
counts take over rather than no throttle at all. The secret check (a deliberately slow KDF, in a
worker thread) runs at most ``concurrency`` at a time; a request that cannot start one within
``queue_wait`` is answered 503, so guesses queue up against each other, not against other calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from gateway.errors import StoreUnavailable
from gateway.stores.login_failures import LoginFailureStore, MemoryLoginFailureStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_KEY_TEXT = 256


class SignInThrottled(Exception):
    """The client id or the address must wait ``retry_after`` seconds before trying again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class SecretChecksBusy(Exception):
    """Every secret-check slot stayed taken for the whole queue wait."""


class SignInThrottle:
    def __init__(self, store: LoginFailureStore, fallback: MemoryLoginFailureStore, *,
                 concurrency: int, queue_wait: float) -> None:
        self._store = store
        self._fallback = fallback
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_wait = queue_wait
        self._degraded = False

    async def check(self, client_id: str, address: str | None) -> None:
        """``SignInThrottled`` while the client id or the address must still wait."""
        wait = await self._on_store(lambda store: store.wait(_keys(client_id, address)))
        if wait > 0:
            raise SignInThrottled(wait)

    async def failed(self, client_id: str, address: str | None) -> None:
        await self._on_store(lambda store: store.failed(_keys(client_id, address)))

    async def succeeded(self, client_id: str) -> None:
        await self._on_store(lambda store: store.forget(_client_key(client_id)))

    @contextlib.asynccontextmanager
    async def secret_check(self) -> AsyncIterator[None]:
        """One of the bounded secret-check slots; ``SecretChecksBusy`` if none frees in time."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._queue_wait)
        except TimeoutError:
            raise SecretChecksBusy from None
        try:
            yield
        finally:
            self._slots.release()

    async def _on_store(self, action: Callable[[LoginFailureStore], Awaitable[T]]) -> T:
        try:
            result = await action(self._store)
        except StoreUnavailable as exc:
            if not self._degraded:
                logger.warning("sign-in throttle: %s; counting in this process until it is back",
                               exc.message)
                self._degraded = True
            return await action(self._fallback)
        if self._degraded:
            logger.info("sign-in throttle: the shared store is back")
            self._degraded = False
        return result


def _client_key(client_id: str) -> str:
    return f"client:{client_id[:MAX_KEY_TEXT]}"


def _keys(client_id: str, address: str | None) -> list[str]:
    keys = [_client_key(client_id)]
    if address:
        keys.append(f"address:{address[:MAX_KEY_TEXT]}")
    return keys
