"""The upstream REST client: one shared aiohttp ``ClientSession`` with a bounded keep-alive pool.

It puts the account's Expie bearer token on the request (the client's own Authorization never
reaches the exchange) and returns the exchange's status and bytes untouched. Transport failures
become ``UpstreamUnavailable`` (502) or ``UpstreamTimeout`` (504) whose messages name the cause,
never the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.auth.secret import Secret
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.settings import UpstreamSettings


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str | None


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._base = settings.base_url
        self._session: aiohttp.ClientSession | None = None

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
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                payload = await response.read()
                return UpstreamResponse(response.status, payload, response.content_type)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"the exchange did not answer within {self._settings.total_timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"cannot reach the exchange: {_cause(exc)}") from exc


def _cause(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection to {exc.host}:{exc.port} failed ({exc.os_error.strerror or 'refused'})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before a response"
    return type(exc).__name__
