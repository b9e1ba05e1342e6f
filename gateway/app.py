"""The composition root: ``create_app(settings, overrides)`` builds and wires every part.

Only this module knows every part. Tests build the gateway with the same function, passing
``Overrides`` (keys, account tokens, users, clock, stores) instead of patching anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import load_account_tokens, load_keyring
from gateway.auth.external import ExternalIssuer, ExternalIssuers
from gateway.auth.grants import ClientCredentialsGrant
from gateway.auth.secret import Secret
from gateway.auth.signing import KeyRing
from gateway.auth.tokens import TokenIssuer, TokenVerifier
from gateway.auth.users import UserDirectory, load_users
from gateway.keys import (
    ACCOUNT_TOKENS,
    AUTHENTICATOR,
    CLOCK,
    GRANT,
    JWKS_BODY,
    KEYRING,
    MARKET_DATA,
    REVOCATIONS,
    SETTINGS,
    TELEMETRY,
    UPSTREAM,
)
from gateway.services.market_data import MarketData
from gateway.settings import Settings
from gateway.stores.market_cache import (
    MarketCacheStore,
    MemoryMarketCacheStore,
    RedisMarketCacheStore,
)
from gateway.stores.redis_client import connect_redis
from gateway.stores.revocation import (
    MemoryRevocationStore,
    RedisRevocationStore,
    RevocationStore,
)
from gateway.telemetry import Telemetry
from gateway.upstream.rest import UpstreamClient
from gateway.web.routes import setup_routes


@dataclass(frozen=True, slots=True)
class Overrides:
    keyring: KeyRing | None = None
    account_tokens: Mapping[str, Secret] | None = None
    directory: UserDirectory | None = None
    clock: Callable[[], float] | None = None
    revocations: RevocationStore | None = None
    market_cache: MarketCacheStore | None = None


class _SharedHttp:
    """One client session for the gateway's own outbound calls (SSO key sets), opened lazily."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def create_app(settings: Settings, overrides: Overrides | None = None) -> web.Application:
    given = overrides or Overrides()
    clock = given.clock or time.time
    keyring = given.keyring or load_keyring(settings.auth)
    tokens = given.account_tokens or load_account_tokens(settings.accounts)
    directory = given.directory or load_users(settings.users_file, tokens.keys())
    http = _SharedHttp()
    auth = settings.auth
    issuer = TokenIssuer(keyring, auth.issuer, auth.audience, clock)
    external = _external_issuers(settings, http, clock)
    verifier = TokenVerifier(keyring, auth.issuer, auth.audience, auth.leeway, clock,
                             external, auth.verify_cache_size)
    app = web.Application()
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[KEYRING] = keyring
    app[JWKS_BODY] = json.dumps(keyring.jwks()).encode()
    app[ACCOUNT_TOKENS] = tokens
    telemetry = app[TELEMETRY] = Telemetry()
    app[UPSTREAM] = UpstreamClient(settings.upstream, events=telemetry.upstream)
    telemetry.upstream.watch(app[UPSTREAM].breaker)
    app[GRANT] = ClientCredentialsGrant(directory, issuer, auth.token_ttl)
    stores = _stores(settings, given, clock)
    app[REVOCATIONS] = stores.revocations
    app[AUTHENTICATOR] = Authenticator(verifier, stores.revocations, directory)
    app[MARKET_DATA] = MarketData(app[UPSTREAM], stores.market_cache, settings.cache, clock)
    app.cleanup_ctx.append(_stores_lifetime(stores))
    app.cleanup_ctx.append(_upstream_lifetime)
    app.on_cleanup.append(_telemetry_shutdown)
    app.on_cleanup.append(_close_outbound(external, http))
    setup_routes(app)
    return app


def _external_issuers(
    settings: Settings, http: _SharedHttp, clock: Callable[[], float]
) -> ExternalIssuers | None:
    if not settings.auth.external_issuers:
        return None
    issuers = [
        ExternalIssuer(issuer=item.issuer, jwks_url=item.jwks_url, user_claim=item.user_claim,
                       audience=item.audience, algorithms=item.algorithms, jwks_ttl=item.jwks_ttl)
        for item in settings.auth.external_issuers
    ]
    return ExternalIssuers(issuers, http.get, clock)


def _close_outbound(
    external: ExternalIssuers | None, http: _SharedHttp
) -> Callable[[web.Application], Awaitable[None]]:
    async def close(_app: web.Application) -> None:
        if external is not None:
            await external.close()
        await http.close()

    return close


@dataclass(slots=True)
class _Stores:
    """The state shared by replicas: in Redis when configured, else in this process."""

    revocations: RevocationStore
    market_cache: MarketCacheStore
    redis: Redis | None


def _stores(settings: Settings, given: Overrides, clock: Callable[[], float]) -> _Stores:
    url, prefix = settings.redis.url, settings.redis.key_prefix
    client = connect_redis(url, settings.redis.max_connections) if url else None
    revocations = given.revocations or (
        RedisRevocationStore(client, prefix, clock, settings.redis.revocation_sync_interval)
        if client else MemoryRevocationStore(clock))
    market_cache = given.market_cache or (
        RedisMarketCacheStore(client, prefix) if client else MemoryMarketCacheStore(clock))
    return _Stores(revocations, market_cache, client)


def _stores_lifetime(stores: _Stores) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        await stores.revocations.start()
        yield
        await stores.revocations.close()
        await stores.market_cache.close()
        if stores.redis is not None:
            await stores.redis.aclose()

    return lifetime


async def _upstream_lifetime(app: web.Application) -> AsyncIterator[None]:
    await app[UPSTREAM].start()
    yield
    await app[UPSTREAM].close()


async def _telemetry_shutdown(app: web.Application) -> None:
    app[TELEMETRY].shutdown()
