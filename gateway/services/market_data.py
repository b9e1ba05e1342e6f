"""Market data (markets list, depth, ticker) through a two-level cache, in front of the exchange.

Level 1 is a small in-process map with a sub-second lifetime; level 2 is the shared store (Redis,
shared by every replica, or in-process when there is no Redis). A miss is filled once: callers in
this process share one flight, and replicas share one fill through a short lock in the store —
the others wait for the value (``fill_wait``) and only then fetch it themselves. When the
exchange fails, a value up to ``stale_if_error`` seconds old is served, labelled STALE. Bodies are
the exchange's bytes. A store failure degrades to the exchange, never to an error.

No aiohttp.web here: the web layer turns a ``MarketAnswer`` into a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from enum import Enum
from typing import Protocol

from gateway.auth.secret import Secret
from gateway.core.decimals import parse_decimal
from gateway.errors import (
    GatewayError,
    NotFound,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.services.single_flight import SingleFlight
from gateway.settings import CacheSettings
from gateway.stores.market_cache import CachedResponse, MarketCacheStore
from gateway.upstream.rest import UpstreamClient, UpstreamResponse

logger = logging.getLogger(__name__)
FILL_POLL = 0.02
FAILED_STATUSES = frozenset({500, 502, 503, 504})


class Endpoint(Enum):
    MARKETS = "markets"
    TICKER = "ticker"
    DEPTH = "depth"

    def path(self, market: str | None) -> str:
        return "/v1/markets" if self is Endpoint.MARKETS else f"/v1/markets/{market}/{self.value}"

    def key(self, market: str | None) -> str:
        return self.value if market is None else _KEY_PREFIX[self] + market


class LiveDepth(Protocol):
    """A live order book that can answer depth itself (the WebSocket fan-out provides one)."""

    def depth_body(self, market: str) -> tuple[bytes, int] | None:
        """The depth body and its Age (seconds since the book was last confirmed); None when
        there is no book trusted enough to serve, and the cache path answers instead."""
        ...


_KEY_PREFIX = {endpoint: f"{endpoint.value}:" for endpoint in Endpoint}


class MarketAnswer:
    """What the web layer renders. A plain slotted class: one is handed out per request."""

    __slots__ = ("age", "body", "cache", "content_type", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str | None, cache: str, age: int
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.cache = cache
        self.age = age


class _Local:
    """An in-process entry: the answer to repeat until ``until``, rebuilt when its Age ticks."""

    __slots__ = ("answer", "answer_until", "entry", "until")

    def __init__(self, entry: CachedResponse, cache: str, until: float, now: float) -> None:
        self.entry = entry
        self.until = until
        self.answer = _answer(entry, cache, now)
        self.answer_until = entry.stored_at + self.answer.age + 1

    def answer_at(self, now: float) -> MarketAnswer:
        if now >= self.answer_until:
            self.answer = _answer(self.entry, self.answer.cache, now)
            self.answer_until = self.entry.stored_at + self.answer.age + 1
        return self.answer


class MarketData:
    def __init__(
        self, upstream: UpstreamClient, store: MarketCacheStore, settings: CacheSettings,
        clock: Callable[[], float], live_depth: LiveDepth | None = None,
    ) -> None:
        self._upstream = upstream
        self._store = store
        self._settings = settings
        self._clock = clock
        self._live_depth = live_depth
        self._ttl = {Endpoint.MARKETS: settings.markets_ttl, Endpoint.TICKER: settings.ticker_ttl,
                     Endpoint.DEPTH: settings.depth_ttl}
        self._local: dict[str, _Local] = {}
        self._flights: SingleFlight[MarketAnswer] = SingleFlight()
        self._names: tuple[bytes, frozenset[str]] = (b"", frozenset())
        self._known: tuple[frozenset[str], float] = (frozenset(), 0.0)
        self._store_failing = False

    async def fetch(self, endpoint: Endpoint, market: str | None, token: Secret) -> MarketAnswer:
        key = endpoint.key(market)
        now = self._clock()
        local = self._local.get(key)
        if local is not None and now < local.until:
            return local.answer_at(now)
        if endpoint is Endpoint.DEPTH and self._live_depth is not None and market is not None:
            live = self._live_depth.depth_body(market)
            if live is not None:
                return MarketAnswer(200, live[0], "application/json", "HIT", live[1])
        return await self._flights.run(key, lambda: self._fill(endpoint, market, key, token))

    async def require_market(self, market: str, token: Secret) -> None:
        """``NotFound`` unless ``market`` is in the exchange's (cached) markets list."""
        names, valid_until = self._known
        if self._clock() < valid_until and market in names:
            return
        if market not in await self.market_names(token):
            raise NotFound(f"unknown market {market}", code="unknown_market")

    async def last_price(self, market: str, token: Secret) -> Decimal | None:
        """The last trade price from the (cached) ticker; None when there is none or unreadable."""
        try:
            answer = await self.fetch(Endpoint.TICKER, market, token)
        except GatewayError:
            return None
        if answer.status != 200:
            return None
        try:
            last = json.loads(answer.body).get("last")
        except (ValueError, AttributeError):
            return None
        value = parse_decimal(last) if isinstance(last, str) else None
        return value or None

    async def market_names(self, token: Secret) -> frozenset[str]:
        answer = await self.fetch(Endpoint.MARKETS, None, token)
        if answer.status != 200:
            raise UpstreamUnavailable(
                f"the exchange's markets list is unavailable (status {answer.status})")
        if answer.body is not self._names[0]:
            self._names = (answer.body, frozenset(_names_in(answer.body)))
        if answer.cache != "STALE":
            # Known names answer require_market without a cache lookup while the list is fresh.
            self._known = (self._names[1], self._clock() + self._settings.local_ttl)
        return self._names[1]

    async def _fill(
        self, endpoint: Endpoint, market: str | None, key: str, token: Secret
    ) -> MarketAnswer:
        ttl = self._ttl[endpoint]
        shared = await self._get(key)
        if shared is not None and self._clock() - shared.stored_at < ttl:
            return self._hit(key, shared, ttl)
        lock = await self._lock(key)
        if lock is None:
            waited = await self._wait_for_fill(key, shared.stored_at if shared else 0.0)
            if waited is not None:
                return self._hit(key, waited, ttl)
        try:
            if lock:  # a replica may have filled it and unlocked since we looked: look again
                filled = await self._get(key)
                if filled is not None and self._clock() - filled.stored_at < ttl:
                    return self._hit(key, filled, ttl)
            return await self._refresh(endpoint, market, key, token, shared)
        finally:
            if lock:
                await self._unlock(key, lock)

    async def _refresh(
        self, endpoint: Endpoint, market: str | None, key: str, token: Secret,
        shared: CachedResponse | None,
    ) -> MarketAnswer:
        try:
            response = await self._upstream.send("GET", endpoint.path(market), token)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:  # incl. an open circuit
            return self._stale_or_raise(key, shared, exc)
        if response.status in FAILED_STATUSES and shared is not None and self._servable(shared):
            return self._stale(key, shared)
        if response.status != 200:
            return MarketAnswer(response.status, response.body, response.content_type, "MISS", 0)
        entry = CachedResponse(response.body, _content_type(response), self._clock())
        await self._put(key, entry, self._ttl[endpoint])
        self._remember(key, entry, self._ttl[endpoint])
        return _answer(entry, "MISS", entry.stored_at)

    def _stale_or_raise(
        self, key: str, shared: CachedResponse | None, error: UpstreamUnavailable | UpstreamTimeout
    ) -> MarketAnswer:
        if shared is not None and self._servable(shared):
            return self._stale(key, shared)
        raise error

    def _servable(self, shared: CachedResponse) -> bool:
        return self._clock() - shared.stored_at <= self._settings.stale_if_error

    def _hit(self, key: str, entry: CachedResponse, ttl: float) -> MarketAnswer:
        self._remember(key, entry, ttl)
        return _answer(entry, "HIT", self._clock())

    def _stale(self, key: str, entry: CachedResponse) -> MarketAnswer:
        """Served stale, and kept so for ``local_ttl``: an outage costs the exchange one call
        per key and interval, not one per request."""
        now = self._clock()
        local = self._local[key] = _Local(entry, "STALE", now + self._settings.local_ttl, now)
        return local.answer

    def _remember(self, key: str, entry: CachedResponse, ttl: float) -> None:
        now = self._clock()
        until = min(entry.stored_at + ttl, now + self._settings.local_ttl)
        self._local[key] = _Local(entry, "HIT", until, now)

    async def _wait_for_fill(self, key: str, older_than: float) -> CachedResponse | None:
        """Another replica holds the fill lock: wait (bounded) for the value it stores."""
        deadline = self._clock() + self._settings.fill_wait
        while self._clock() < deadline:
            await asyncio.sleep(FILL_POLL)
            entry = await self._get(key)
            if entry is not None and entry.stored_at > older_than:
                return entry
        return None

    async def _get(self, key: str) -> CachedResponse | None:
        try:
            entry = await self._store.get(key)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return None
        self._store_failing = False
        return entry

    async def _put(self, key: str, entry: CachedResponse, ttl: float) -> None:
        try:
            await self._store.put(key, entry, ttl + self._settings.stale_if_error)
        except StoreUnavailable as exc:
            self._store_failed(exc)

    async def _lock(self, key: str) -> str | None:
        """The fill lock's token; ``""`` (fill without a lock) when the store cannot be reached."""
        try:
            return await self._store.try_lock(key, self._settings.fill_lock)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return ""

    async def _unlock(self, key: str, lock: str) -> None:
        try:
            await self._store.unlock(key, lock)
        except StoreUnavailable as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreUnavailable) -> None:
        if not self._store_failing:
            logger.warning("market cache store unavailable, going to the exchange: %s", exc)
        self._store_failing = True


def _answer(entry: CachedResponse, cache: str, now: float) -> MarketAnswer:
    return MarketAnswer(200, entry.body, entry.content_type, cache,
                        max(0, int(now - entry.stored_at)))


def _content_type(response: UpstreamResponse) -> str:
    return response.content_type or "application/json"


def _names_in(body: bytes) -> list[str]:
    try:
        markets = json.loads(body)
    except ValueError:
        return []
    if not isinstance(markets, list):
        return []
    return [item["name"] for item in markets
            if isinstance(item, dict) and isinstance(item.get("name"), str)]
