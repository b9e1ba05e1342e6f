"""The composition root: ``create_app(settings, overrides)`` builds and wires every part.

Only this module knows every part. Tests build the gateway with the same function, passing
``Overrides`` (keys, account tokens, users, clock, stores) instead of patching anything.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import load_account_tokens, load_keyring, redis_password
from gateway.auth.external import ExternalIssuer, ExternalIssuers
from gateway.auth.grants import ClientCredentialsGrant
from gateway.auth.secret import Secret
from gateway.auth.sign_in_throttle import SignInThrottle
from gateway.auth.signing import KeyRing
from gateway.auth.tokens import TokenIssuer, TokenVerifier
from gateway.auth.users import UserDirectory, load_users
from gateway.core.audit_chain import START
from gateway.core.cluster_state import IN_PROCESS, ClusterState
from gateway.errors import PersistenceRequired
from gateway.fanout.cluster import ClusterFanout
from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import GOING_AWAY
from gateway.keys import (
    ACCOUNT_TOKENS,
    AUDIT_TRAIL,
    AUTHENTICATOR,
    CLOCK,
    CLUSTER_STATE,
    FANOUT,
    GRANT,
    JWKS_BODY,
    KEYRING,
    KILL_SWITCHES,
    LIFECYCLE,
    MARKET_DATA,
    ORDER_DESK,
    ORDER_VIEWS,
    READ_LIMITS,
    RECONCILER,
    REVOCATIONS,
    SETTINGS,
    SETTLEMENTS,
    STATE_LOSS,
    TELEMETRY,
    UPSTREAM,
    WS_USERS,
)
from gateway.lifecycle import Lifecycle
from gateway.services.audit_trail import AuditTrail
from gateway.services.kill_switches import KillSwitches
from gateway.services.market_data import MarketData
from gateway.services.order_desk import OrderDesk, Settlement
from gateway.services.order_views import OrderViews
from gateway.services.pacing import AccountPacer
from gateway.services.pre_trade import PreTradeChecks
from gateway.services.read_limits import ReadLimits
from gateway.services.reconciler import Reconciler
from gateway.services.state_loss import StateLoss
from gateway.services.state_watch import StateWatch
from gateway.services.write_spool import WriteSpool
from gateway.settings import Settings
from gateway.stores.audit import AuditLog, open_audit_log
from gateway.stores.cluster_epoch import ClusterEpochStore
from gateway.stores.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from gateway.stores.kill_switch import KillSwitchStore, MemoryKillSwitchStore
from gateway.stores.kill_switch_redis import RedisKillSwitchStore
from gateway.stores.login_failures import (
    LoginFailureStore,
    MemoryLoginFailureStore,
    RedisLoginFailureStore,
)
from gateway.stores.market_cache import (
    MarketCacheStore,
    MemoryMarketCacheStore,
    RedisMarketCacheStore,
)
from gateway.stores.market_relay import RedisRelayStore
from gateway.stores.ownership import MemoryOwnershipStore, OwnershipStore, RedisOwnershipStore
from gateway.stores.rate_limits import (
    MemoryRateLimitStore,
    RateLimitStore,
    RedisRateLimitStore,
)
from gateway.stores.reconcile_state import (
    MemoryReconcileState,
    ReconcileState,
    RedisReconcileState,
)
from gateway.stores.redis_client import connect_redis
from gateway.stores.redis_persistence import require_persistence
from gateway.stores.relay_bus import RelayBus
from gateway.stores.revocation import (
    MemoryRevocationStore,
    RedisRevocationStore,
    RevocationStore,
)
from gateway.telemetry import Telemetry
from gateway.upstream.rest import UpstreamClient
from gateway.web.bodies import LARGEST_BODY
from gateway.web.routes import setup_routes
from gateway.ws_settings import upstream_ws_url


@dataclass(frozen=True, slots=True)
class Overrides:
    keyring: KeyRing | None = None
    account_tokens: Mapping[str, Secret] | None = None
    directory: UserDirectory | None = None
    clock: Callable[[], float] | None = None
    revocations: RevocationStore | None = None
    market_cache: MarketCacheStore | None = None
    audit_log: AuditLog | None = None


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
    directory = given.directory or load_users(settings.users_file, tokens.keys(), settings.orders)
    http = _SharedHttp()
    auth = settings.auth
    issuer = TokenIssuer(keyring, auth.issuer, auth.audience, clock)
    external = _external_issuers(settings, http, clock)
    verifier = TokenVerifier(keyring, auth.issuer, auth.audience, auth.leeway, clock,
                             external, auth.verify_cache_size, auth.max_token_ttl)
    app = web.Application(client_max_size=LARGEST_BODY)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[LIFECYCLE] = Lifecycle()
    app[KEYRING] = keyring
    app[JWKS_BODY] = json.dumps(keyring.jwks()).encode()
    app[ACCOUNT_TOKENS] = tokens
    telemetry = app[TELEMETRY] = Telemetry()
    app[UPSTREAM] = UpstreamClient(settings.upstream, events=telemetry.upstream)
    telemetry.upstream.watch(app[UPSTREAM].breaker)
    stores = _stores(settings, given, clock)
    app[GRANT] = ClientCredentialsGrant(directory, issuer, auth.token_ttl, SignInThrottle(
        stores.login_failures, MemoryLoginFailureStore(auth.sign_in.backoff),
        concurrency=auth.sign_in.secret_checks, queue_wait=auth.sign_in.secret_check_wait))
    app[REVOCATIONS] = stores.revocations
    app[AUTHENTICATOR] = Authenticator(verifier, stores.revocations, directory)
    hub = app[FANOUT] = Hub(settings.ws, upstream_ws_url(settings.ws, settings.upstream.base_url),
                            events=telemetry.fanout,
                            cluster=_cluster_fanout(settings, stores, telemetry))
    app[WS_USERS] = Counter()
    app[MARKET_DATA] = MarketData(app[UPSTREAM], stores.market_cache, settings.cache, clock,
                                  live_depth=hub)
    app[READ_LIMITS] = ReadLimits(directory)
    app[CLUSTER_STATE] = stores.cluster
    app[STATE_LOSS] = StateLoss(stores.cluster, stores.epochs, clock)
    telemetry.orders.watch_state(lambda: stores.cluster.loss is not None)
    _setup_order_desk(app, settings, stores, directory, clock)
    app.cleanup_ctx.append(_stores_lifetime(settings, stores))
    app.cleanup_ctx.append(_upstream_lifetime)
    app.cleanup_ctx.append(_fanout_lifetime)
    app.on_shutdown.append(_close_websockets)
    app.on_cleanup.append(_telemetry_shutdown)
    app.on_cleanup.append(_close_outbound(external, http))
    setup_routes(app)
    return app


def _cluster_fanout(
    settings: Settings, stores: _Stores, telemetry: Telemetry
) -> ClusterFanout | None:
    """One upstream subscription per stream across the replicas sharing Redis, if enabled."""
    if stores.redis is None or not settings.ws.cluster.enabled:
        return None
    return ClusterFanout(RedisRelayStore(stores.redis, settings.redis.key_prefix),
                         RelayBus(stores.redis), settings.ws.cluster, telemetry.fanout)


def _setup_order_desk(
    app: web.Application, settings: Settings, stores: _Stores, directory: UserDirectory,
    clock: Callable[[], float],
) -> None:
    orders, tokens = settings.orders, app[ACCOUNT_TOKENS]
    audit = app[AUDIT_TRAIL] = AuditTrail(
        stores.audit, spool_limit=settings.audit.spool_limit,
        retry_interval=settings.audit.spool_retry_interval)
    views = app[ORDER_VIEWS] = OrderViews(app[UPSTREAM], stores.ownership,
                                          orders.finished_scan_limit)
    pacing, market_data = orders.pacing, app[MARKET_DATA]

    async def reference_price(market: str, account: str) -> Decimal | None:
        return await market_data.last_price(market, tokens[account])

    checks = PreTradeChecks(orders, stores.kill_switch, stores.rate_limits,
                            AccountPacer(pacing.rate, pacing.burst, pacing.max_wait),
                            reference_price, stores.cluster)
    settlements = app[SETTLEMENTS] = WriteSpool(
        "order settlements", Settlement.run, lambda item: item.what,
        limit=settings.audit.spool_limit, retry_interval=settings.audit.spool_retry_interval)
    reconciler = app[RECONCILER] = Reconciler(
        orders, trail=audit, idempotency=stores.idempotency, ownership=stores.ownership,
        views=views, tokens=tokens, state=stores.reconcile, settlements=settlements,
        events=app[TELEMETRY].orders, clock=clock, holder=uuid.uuid4().hex,
        upstream_timeout=settings.upstream.total_timeout)
    desk = app[ORDER_DESK] = OrderDesk(
        orders, upstream=app[UPSTREAM], tokens=tokens, directory=directory,
        market_data=app[MARKET_DATA], checks=checks, audit=audit,
        idempotency=stores.idempotency, ownership=stores.ownership, clock=clock,
        events=app[TELEMETRY].orders, settlements=settlements, unknowns=reconciler.report)
    app[TELEMETRY].orders.watch_spool(lambda: audit.spooled)
    app[TELEMETRY].orders.watch_settlements(lambda: settlements.spooled)
    app[KILL_SWITCHES] = KillSwitches(
        stores.kill_switch, desk=desk, views=views, market_data=app[MARKET_DATA], tokens=tokens,
        directory=directory, audit=audit, clock=clock)


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
    rate_limits: RateLimitStore
    idempotency: IdempotencyStore
    ownership: OwnershipStore
    kill_switch: KillSwitchStore
    audit: AuditLog
    login_failures: LoginFailureStore
    reconcile: ReconcileState
    cluster: ClusterState
    redis: Redis | None
    epochs: ClusterEpochStore | None = None
    watch: StateWatch | None = None


def _stores(settings: Settings, given: Overrides, clock: Callable[[], float]) -> _Stores:
    url, prefix = settings.redis.url, settings.redis.key_prefix
    client = (connect_redis(url, settings.redis.max_connections,
                           password=redis_password(settings.redis)) if url else None)
    revocations = given.revocations or (
        RedisRevocationStore(client, prefix, clock, settings.redis.revocation_sync_interval)
        if client else MemoryRevocationStore(clock))
    market_cache = given.market_cache or (
        RedisMarketCacheStore(client, prefix) if client else MemoryMarketCacheStore(clock))
    orders, backoff = settings.orders, settings.auth.sign_in.backoff
    cluster = ClusterState()
    if client is None or not settings.audit_in_redis:
        # The epoch lives beside the chain in Redis: with in-process stores or one process's
        # file trail there is no shared chain to lose.
        cluster.join(IN_PROCESS, START)
    if client is None:
        rate_limits = MemoryRateLimitStore()
        return _Stores(revocations, market_cache, rate_limits,
                       MemoryIdempotencyStore(clock, limits=rate_limits), MemoryOwnershipStore(),
                       MemoryKillSwitchStore(orders.kill_switch.state_file),
                       given.audit_log or open_audit_log(settings, None),
                       MemoryLoginFailureStore(backoff), MemoryReconcileState(), cluster, None)
    epochs = ClusterEpochStore(client, prefix) if settings.audit_in_redis else None
    return _Stores(
        revocations, market_cache, RedisRateLimitStore(client, prefix),
        RedisIdempotencyStore(client, prefix),
        RedisOwnershipStore(client, prefix, orders.ownership_ttl),
        RedisKillSwitchStore(client, prefix, orders.kill_switch.sync_interval),
        given.audit_log or open_audit_log(settings, client, guard=cluster),
        RedisLoginFailureStore(client, prefix, backoff), RedisReconcileState(client, prefix),
        cluster, client, epochs,
        StateWatch(epochs, cluster, settings.redis.state_check_interval) if epochs else None)


def _stores_lifetime(
    settings: Settings, stores: _Stores
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        if stores.redis is not None and settings.redis.require_persistence:
            try:
                await require_persistence(stores.redis)
            except PersistenceRequired:
                await stores.redis.aclose()  # the gateway does not start: nothing else opened
                raise
        if stores.watch is not None:
            await stores.watch.start()
        await stores.revocations.start()
        await stores.kill_switch.start()
        await stores.audit.start()
        await app[AUDIT_TRAIL].start()
        await app[SETTLEMENTS].start()
        await app[RECONCILER].start()
        yield
        await app[RECONCILER].close()
        await app[SETTLEMENTS].close()
        await app[AUDIT_TRAIL].close()
        await stores.audit.close()
        await stores.kill_switch.close()
        await stores.revocations.close()
        if stores.watch is not None:
            await stores.watch.close()
        await stores.market_cache.close()
        for store in (stores.rate_limits, stores.idempotency, stores.ownership):
            await store.close()
        if stores.redis is not None:
            await stores.redis.aclose()

    return lifetime


async def _upstream_lifetime(app: web.Application) -> AsyncIterator[None]:
    await app[UPSTREAM].start()
    yield
    await app[UPSTREAM].close()


async def _fanout_lifetime(app: web.Application) -> AsyncIterator[None]:
    await app[FANOUT].start()
    yield
    await app[FANOUT].close()


async def _close_websockets(app: web.Application) -> None:
    """On shutdown, before the server stops: clients reconnect elsewhere (1001)."""
    await app[FANOUT].shutdown(GOING_AWAY, "the gateway is shutting down")


async def _telemetry_shutdown(app: web.Application) -> None:
    app[TELEMETRY].shutdown()
