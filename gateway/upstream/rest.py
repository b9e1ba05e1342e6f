"""The upstream REST client: one shared aiohttp ``ClientSession`` with a bounded keep-alive pool.

It puts the account's Expie bearer token on the request (the client's own Authorization never
reaches the exchange) and returns the exchange's status and bytes untouched. Transport failures
become ``UpstreamUnavailable`` (502) or ``UpstreamTimeout`` (504) whose messages name the cause,
never the token.

Resilience, per upstream (one client = one upstream):
- A ``CircuitBreaker`` sees every attempt. A failure is a transport error, a timeout or a
  502/503/504 answer; anything else (4xx included) is a success. While it is open, ``send``
  raises ``CircuitOpen`` (503, ``Retry-After``) without touching the network.
- Only GETs are retried (orders and cancels are not idempotent): at most ``retries`` more
  attempts, on the failures above, after ``retry_backoff * 2**n`` seconds with full jitter.
  When they run out, a 502/503/504 answer passes through unchanged; a transport error raises.

The first attempt is written inline in ``send``: a plain successful call costs no more than it
did before retries existed (no extra coroutine, no extra allocation). Everything after a
failure lives in ``_recover``. Metrics are reported through ``UpstreamEvents``, on failures and
retries only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from gateway.auth.secret import Secret
from gateway.errors import CircuitOpen, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import UpstreamSettings
from gateway.upstream.breaker import CircuitBreaker, CircuitState

RETRYABLE_STATUSES = frozenset({502, 503, 504})
_STATUS_CAUSES = {status: f"http_{status}" for status in RETRYABLE_STATUSES}


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str | None


# A finished attempt: the exchange's answer, or the gateway error its transport failure became.
_Outcome = UpstreamResponse | UpstreamUnavailable | UpstreamTimeout


class UpstreamEvents(Protocol):
    """Where the client reports what metrics count; called on failures and retries only.

    ``cause`` is one of ``timeout``, ``connection``, ``http_502``, ``http_503``, ``http_504``.
    """

    def retried(self, cause: str) -> None: ...

    def failed(self, cause: str) -> None: ...


class _NoEvents:
    def retried(self, cause: str) -> None:
        pass

    def failed(self, cause: str) -> None:
        pass


class UpstreamClient:
    def __init__(
        self, settings: UpstreamSettings, *, events: UpstreamEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        random_source: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """``clock`` drives the breaker; ``random_source`` (in [0, 1)) and ``sleep`` the backoff."""
        self._settings = settings
        self._base = settings.base_url
        self._session: aiohttp.ClientSession | None = None
        self._events = events or _NoEvents()
        self._random = random_source
        self._sleep = sleep
        self._breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown, clock)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.max_connections, keepalive_timeout=30, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(
            total=self._settings.total_timeout, connect=self._settings.connect_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def started(self) -> bool:
        return self._session is not None

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def circuit_state(self) -> CircuitState:
        return self._breaker.state

    async def send(
        self, method: str, path_and_query: str, token: Secret, body: bytes | None = None,
        content_type: str | None = None,
    ) -> UpstreamResponse:
        """``method path_and_query`` (already encoded, e.g. ``/v1/markets?x=1``) as ``token``."""
        if self._session is None:
            raise UpstreamUnavailable("the upstream client is not running")
        headers = {"Authorization": f"Bearer {token.reveal()}"}
        if content_type:
            headers["Content-Type"] = content_type
        url = URL(self._base + path_and_query, encoded=True)
        self._breaker.before_call()
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                answer = UpstreamResponse(
                    response.status, await response.read(), response.content_type)
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure: _Outcome = self._translate(exc)
        except BaseException:
            self._breaker.record_abandoned()
            raise
        else:
            if answer.status not in RETRYABLE_STATUSES:
                self._breaker.record_success()
                return answer
            failure = answer
        return await self._recover(method, url, body, headers, failure)

    async def _recover(
        self, method: str, url: URL, body: bytes | None, headers: Mapping[str, str],
        outcome: _Outcome,
    ) -> UpstreamResponse:
        """After a failed first attempt: retry a GET while allowed, then deliver the outcome."""
        self._failed(outcome)
        retries = self._settings.retries if method == "GET" else 0
        for attempt in range(retries):
            await self._sleep(self._settings.retry_backoff * 2**attempt * self._random())
            if not self._admitted():
                break
            self._events.retried(_label(outcome))
            outcome = await self._attempt(method, url, body, headers)
            if isinstance(outcome, UpstreamResponse) and outcome.status not in RETRYABLE_STATUSES:
                self._breaker.record_success()
                return outcome
            self._failed(outcome)
        if isinstance(outcome, UpstreamResponse):
            return outcome
        raise outcome

    async def _attempt(
        self, method: str, url: URL, body: bytes | None, headers: Mapping[str, str]
    ) -> _Outcome:
        """One more attempt (the first one is inline in ``send``); errors are returned."""
        if self._session is None:
            return UpstreamUnavailable("the upstream client is not running")
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                return UpstreamResponse(
                    response.status, await response.read(), response.content_type)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._translate(exc)
        except BaseException:
            self._breaker.record_abandoned()
            raise

    def _admitted(self) -> bool:
        """Whether the breaker lets a retry through (it may have opened meanwhile)."""
        try:
            self._breaker.before_call()
        except CircuitOpen:
            return False
        return True

    def _failed(self, outcome: _Outcome) -> None:
        self._breaker.record_failure()
        self._events.failed(_label(outcome))

    def _translate(
        self, exc: TimeoutError | aiohttp.ClientError
    ) -> UpstreamUnavailable | UpstreamTimeout:
        error: UpstreamUnavailable | UpstreamTimeout
        never_connected = aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        connected = not isinstance(exc, never_connected)
        if isinstance(exc, TimeoutError):
            error = UpstreamTimeout(
                f"the exchange did not answer within {self._settings.total_timeout:g} s",
                request_sent=connected)
        else:
            error = UpstreamUnavailable(f"cannot reach the exchange: {_describe(exc)}",
                                        request_sent=connected)
        error.__cause__ = exc
        return error


def _label(outcome: _Outcome) -> str:
    """The metrics' ``cause`` of a failed attempt."""
    if isinstance(outcome, UpstreamResponse):
        return _STATUS_CAUSES[outcome.status]
    return "timeout" if isinstance(outcome, UpstreamTimeout) else "connection"


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection to {exc.host}:{exc.port} failed ({exc.os_error.strerror or 'refused'})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before a response"
    return type(exc).__name__
