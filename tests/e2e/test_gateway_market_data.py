"""Market data through the gateway's cache, against the simulator over sockets.

What the cache promises, seen from outside: concurrent identical requests cost the exchange one
call (in one process, and across replicas sharing Redis); a value expires after its TTL and the
next request refetches it; every cached answer carries ``X-Cache`` and ``Age`` and the exchange's
bytes unchanged; during an outage an expired value is served STALE up to ``stale_if_error``, and
then the failure is an error naming its cause; bad requests (an unknown market, bad query
parameters) never reach the exchange; a Redis that cannot be reached degrades to the exchange.

Upstream calls are counted by the simulator (``/_sim/stats``). Nothing here asserts a timing:
time moves by a fake clock where a test needs it to, and by short bounded sleeps otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis.asyncio
from multidict import CIMultiDictProxy

from gateway.app import Overrides
from gateway.settings import RedisSettings, Settings
from gateway.stores.market_cache import CachedResponse, RedisMarketCacheStore
from tests.clock import FakeClock
from tests.conftest import StartGateway
from tests.gateway_harness import RunningGateway, gateway_settings
from tests.simulator_harness import RunningSimulator

MARKET = "BCCBTC"
TICKER = f"/v1/markets/{MARKET}/ticker"
DEPTH = f"/v1/markets/{MARKET}/depth"
MARKETS = "/v1/markets"
TICKER_ROUTE = "GET /v1/markets/{market}/ticker"
MARKETS_ROUTE = "GET /v1/markets"
CACHE_STATES = frozenset({"HIT", "MISS", "STALE"})

Answer = tuple[int, bytes, CIMultiDictProxy[str]]


# --- helpers -------------------------------------------------------------------------------------


def market_settings(
    sim: RunningSimulator, redis: RedisSettings | None = None, **cache: float
) -> Settings:
    """Settings for these tests: no GET retries and a breaker that never opens, so one request
    is one upstream call and an outage is answered the same way every time."""
    settings = gateway_settings(sim, redis)
    return dataclasses.replace(
        settings,
        upstream=dataclasses.replace(settings.upstream, retries=0, breaker_failures=1000),
        cache=dataclasses.replace(settings.cache, **cache),
    )


async def get(gateway: RunningGateway, path: str, token: str) -> Answer:
    """``GET path`` through the gateway: status, the raw body bytes, headers."""
    headers = {"Authorization": f"Bearer {token}"}
    async with gateway.http.get(gateway.url(path), headers=headers) as response:
        return response.status, await response.read(), response.headers


async def direct(sim: RunningSimulator, path: str) -> bytes:
    """The simulator's own bytes for ``path`` (this counts as one upstream call)."""
    async with sim.http.get(sim.url(path), headers=sim.auth()) as response:
        assert response.status == 200
        return await response.read()


async def upstream_calls(sim: RunningSimulator) -> dict[str, int]:
    calls: dict[str, int] = (await sim.stats())["rest_requests"]
    return calls


def assert_cached(headers: CIMultiDictProxy[str], cache: str, age: int | None = None) -> None:
    assert headers["X-Cache"] == cache
    assert headers["Age"].isdigit()
    if age is not None:
        assert int(headers["Age"]) == age


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def shared_level(request: pytest.FixtureRequest) -> RedisSettings | None:
    """The cache's shared level: in-process (no Redis), or the real Redis under a fresh prefix."""
    if request.param == "memory":
        return None
    return RedisSettings(url=request.getfixturevalue("redis_url"),
                         key_prefix=request.getfixturevalue("key_prefix"))


# --- one upstream call for many callers ----------------------------------------------------------


async def test_concurrent_identical_tickers_make_one_upstream_call(
    sim: RunningSimulator, start_gateway_for: StartGateway, shared_level: RedisSettings | None,
) -> None:
    gateway = await start_gateway_for(sim, settings=market_settings(sim, shared_level))
    token = gateway.token()
    answers = await asyncio.gather(*(get(gateway, TICKER, token) for _ in range(100)))
    assert await upstream_calls(sim) == {MARKETS_ROUTE: 1, TICKER_ROUTE: 1}
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, body, _ in answers}) == 1
    caches = [headers["X-Cache"] for _, _, headers in answers]
    assert "MISS" in caches
    assert set(caches) <= {"MISS", "HIT"}
    assert answers[0][1] == await direct(sim, TICKER)


@pytest.mark.redis
async def test_two_replicas_sharing_redis_make_one_upstream_call(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_url: str, key_prefix: str,
) -> None:
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix)
    a, b = [await start_gateway_for(sim, settings=market_settings(sim, shared))
            for _ in range(2)]
    token_a, token_b = a.token(), b.token()
    answers = await asyncio.gather(*(get(a, TICKER, token_a) for _ in range(50)),
                                   *(get(b, TICKER, token_b) for _ in range(50)))
    assert (await upstream_calls(sim))[TICKER_ROUTE] == 1
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, body, _ in answers}) == 1
    assert {headers["X-Cache"] for _, _, headers in answers} <= {"MISS", "HIT"}
    assert [headers["X-Cache"] for _, _, headers in answers].count("MISS") >= 1


@pytest.mark.redis
async def test_a_value_one_replica_fetched_is_a_hit_on_the_other(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_url: str, key_prefix: str,
) -> None:
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix)
    a, b = [await start_gateway_for(sim, settings=market_settings(sim, shared))
            for _ in range(2)]
    for path in (MARKETS, DEPTH, TICKER):
        status, body_a, headers = await get(a, path, a.token())
        assert (status, headers["X-Cache"]) == (200, "MISS")
        status, body_b, headers = await get(b, path, b.token())
        assert (status, headers["X-Cache"]) == (200, "HIT")
        assert body_b == body_a
    assert await upstream_calls(sim) == {
        MARKETS_ROUTE: 1, "GET /v1/markets/{market}/depth": 1, TICKER_ROUTE: 1}


@pytest.mark.redis
async def test_a_fill_that_lands_between_lookup_and_lock_is_not_fetched_twice(
    sim: RunningSimulator, start_gateway_for: StartGateway, redis_client: redis.asyncio.Redis,
    redis_url: str, key_prefix: str,
) -> None:
    """Replica B finds nothing, then A fills the key and releases its lock, then B takes the
    (now free) lock: B must use A's value rather than call the exchange again."""
    shared = RedisSettings(url=redis_url, key_prefix=key_prefix)
    a = await start_gateway_for(sim, settings=market_settings(sim, shared))
    late = LateLocker(RedisMarketCacheStore(redis_client, key_prefix), "ticker:")
    b = await start_gateway_for(sim, settings=market_settings(sim, shared),
                                overrides=Overrides(market_cache=late))
    await get(b, MARKETS, b.token())  # the markets list is not what this test is about
    from_b = asyncio.create_task(get(b, TICKER, b.token()))
    await asyncio.wait_for(late.looked_up.wait(), timeout=5)
    status, body_a, headers = await get(a, TICKER, a.token())
    assert (status, headers["X-Cache"]) == (200, "MISS")
    late.filled.set()
    status, body_b, headers = await asyncio.wait_for(from_b, timeout=5)
    assert (status, headers["X-Cache"], body_b) == (200, "HIT", body_a)
    assert (await upstream_calls(sim))[TICKER_ROUTE] == 1


class LateLocker:
    """A Redis cache store whose first lock attempt on a key with ``prefix`` waits for ``filled``
    (set by the test once another replica has filled the key and released its lock)."""

    def __init__(self, store: RedisMarketCacheStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self.looked_up = asyncio.Event()
        self.filled = asyncio.Event()

    async def get(self, key: str) -> CachedResponse | None:
        value = await self._store.get(key)
        if key.startswith(self._prefix):
            self.looked_up.set()
        return value

    async def put(self, key: str, value: CachedResponse, retain_for: float) -> None:
        await self._store.put(key, value, retain_for)

    async def try_lock(self, key: str, hold_for: float) -> str | None:
        if key.startswith(self._prefix) and self.looked_up.is_set():
            await asyncio.wait_for(self.filled.wait(), timeout=5)
        return await self._store.try_lock(key, hold_for)

    async def unlock(self, key: str, token: str) -> None:
        await self._store.unlock(key, token)

    async def close(self) -> None:
        await self._store.close()


# --- expiry, headers, bytes ----------------------------------------------------------------------


async def test_an_expired_ticker_is_fetched_again_and_shows_the_new_book(
    sim: RunningSimulator, start_gateway_for: StartGateway, shared_level: RedisSettings | None,
) -> None:
    settings = market_settings(sim, shared_level, ticker_ttl=0.3)
    gateway = await start_gateway_for(sim, settings=settings)
    token = gateway.token()
    status, before, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    await sim.place(MARKET, 1, "1", "0.2")  # a sell order: the book now has an ask
    status, cached, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"], cached) == (200, "HIT", before)
    await asyncio.sleep(settings.cache.ticker_ttl + 0.1)
    status, after, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert (await upstream_calls(sim))[TICKER_ROUTE] == 2
    assert after != before
    assert after == await direct(sim, TICKER)
    ticker: dict[str, Any] = await sim.get(TICKER)
    assert ticker["ask"] == "0.2"


@pytest.mark.parametrize("path", [MARKETS, TICKER, DEPTH])
async def test_cached_answers_carry_x_cache_and_age_and_the_exchanges_bytes(
    sim: RunningSimulator, start_gateway_for: StartGateway, shared_level: RedisSettings | None,
    clock: FakeClock, path: str,
) -> None:
    settings = market_settings(sim, shared_level, markets_ttl=10, ticker_ttl=10, depth_ttl=10)
    gateway = await start_gateway_for(sim, settings=settings, clock=clock)
    token = gateway.token()
    status, first, headers = await get(gateway, path, token)
    assert status == 200
    assert_cached(headers, "MISS", age=0)
    assert headers["Content-Type"].startswith("application/json")
    clock.advance(3)  # past the in-process level: the shared level answers
    status, second, headers = await get(gateway, path, token)
    assert status == 200
    assert_cached(headers, "HIT", age=3)
    status, third, headers = await get(gateway, path, token)  # the in-process level answers
    assert status == 200
    assert_cached(headers, "HIT", age=3)
    calls = await upstream_calls(sim)
    assert first == second == third == await direct(sim, path)
    assert calls[f"GET {path.replace(MARKET, '{market}')}"] == 1


# --- outages -------------------------------------------------------------------------------------


async def test_an_expired_value_is_served_stale_while_the_exchange_fails(
    sim: RunningSimulator, start_gateway_for: StartGateway, shared_level: RedisSettings | None,
    clock: FakeClock,
) -> None:
    # Real seconds matter only to Redis, which forgets a value ticker_ttl + stale_if_error
    # (6 s) after storing it: far longer than this test runs.
    settings = market_settings(sim, shared_level, ticker_ttl=1, stale_if_error=5)
    gateway = await start_gateway_for(sim, settings=settings, clock=clock)
    token = gateway.token()
    status, fresh, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    await sim.set_faults(error_rate=1.0, error_status=503)
    clock.advance(2)  # expired (ttl 1 s), within the stale allowance (5 s more)
    status, stale, headers = await get(gateway, TICKER, token)
    assert (status, stale) == (200, fresh)
    assert_cached(headers, "STALE", age=2)
    clock.advance(5)  # 7 s old: past ttl + stale_if_error
    status, failed, headers = await get(gateway, TICKER, token)
    assert status == 503
    assert headers["Content-Type"].startswith("application/json")
    assert failed == b'{"code": 3, "message": "service unavailable"}'  # the exchange's own
    await sim.set_faults(clear=True)
    assert (await upstream_calls(sim))[TICKER_ROUTE] == 3
    status, recovered, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"], recovered) == (200, "MISS", fresh)


async def test_past_the_stale_limit_an_unreachable_exchange_is_a_502_naming_the_cause(
    sim: RunningSimulator, start_gateway_for: StartGateway, clock: FakeClock,
) -> None:
    settings = market_settings(sim, ticker_ttl=1, stale_if_error=5)
    gateway = await start_gateway_for(sim, settings=settings, clock=clock)
    token = gateway.token()
    status, fresh, _ = await get(gateway, TICKER, token)
    assert status == 200
    await sim.server.close()
    clock.advance(2)
    status, stale, headers = await get(gateway, TICKER, token)
    assert (status, headers["X-Cache"], stale) == (200, "STALE", fresh)
    clock.advance(5)
    status, body, headers = await gateway.call("GET", TICKER, token)
    assert status == 502
    assert body["error"]["code"] == "upstream_unavailable"
    assert "connection" in body["error"]["message"]
    assert body["error"]["request_id"] == headers["X-Request-Id"]


async def test_a_timed_out_exchange_is_answered_stale_then_504_past_the_limit(
    sim: RunningSimulator, start_gateway_for: StartGateway, clock: FakeClock,
) -> None:
    settings = market_settings(sim, ticker_ttl=1, stale_if_error=5)
    settings = dataclasses.replace(
        settings, upstream=dataclasses.replace(settings.upstream, total_timeout=0.3))
    gateway = await start_gateway_for(sim, settings=settings, clock=clock)
    token = gateway.token()
    status, fresh, _ = await get(gateway, TICKER, token)
    assert status == 200
    await sim.set_faults(latency_ms=2000)
    clock.advance(2)
    status, stale, headers = await get(gateway, TICKER, token)
    assert (status, stale) == (200, fresh)
    assert_cached(headers, "STALE", age=2)
    clock.advance(5)
    status, body, _ = await gateway.call("GET", TICKER, token)
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    assert "did not answer" in body["error"]["message"]


@pytest.mark.parametrize("path", [TICKER, DEPTH, MARKETS])
async def test_an_unreachable_redis_degrades_to_the_exchange(
    sim: RunningSimulator, start_gateway_for: StartGateway, unused_tcp_port: int, path: str,
) -> None:
    nowhere = RedisSettings(url=f"redis://127.0.0.1:{unused_tcp_port}/0")
    gateway = await start_gateway_for(sim, settings=market_settings(sim, nowhere))
    token = gateway.token()
    answers = await asyncio.gather(*(get(gateway, path, token) for _ in range(10)))
    assert {status for status, _, _ in answers} == {200}
    assert "MISS" in {headers["X-Cache"] for _, _, headers in answers}
    assert len({body for _, body, _ in answers}) == 1
    assert answers[0][1] == await direct(sim, path)


# --- requests that never reach the exchange ------------------------------------------------------


async def test_an_unknown_market_is_a_404_without_upstream_calls(
    sim: RunningSimulator, gw: RunningGateway
) -> None:
    token = gw.token()
    assert (await get(gw, MARKETS, token))[0] == 200  # the markets list, cached
    before = await upstream_calls(sim)
    for method, path in [("GET", "/v1/markets/NOPE/ticker"), ("GET", "/v1/markets/NOPE/depth"),
                         ("POST", "/v1/markets/NOPE/orders"),
                         ("GET", "/v1/markets/NOPE/orders/_pending")]:
        status, body, _ = await gw.call(method, path, token,
                                        data={"side": "1", "amount": "1", "price": "0.2"}
                                        if method == "POST" else None)
        assert (status, body["error"]["code"]) == (404, "unknown_market"), path
        assert "NOPE" in body["error"]["message"]
    assert await upstream_calls(sim) == before == {MARKETS_ROUTE: 1}


@pytest.mark.parametrize("path", [
    f"{TICKER}?foo=1",
    f"{TICKER}?limit=5",
    f"{DEPTH}?foo=1",
    f"{DEPTH}?interval=0",
    f"{MARKETS}?page=2",
    f"/v1/markets/{MARKET}/orders/_pending?limit=abc",
    f"/v1/markets/{MARKET}/orders/_pending?offset=-1",
    f"/v1/markets/{MARKET}/orders/_pending?limit=1&limit=2",
    "/v1/balance/history?coin_code=BTC&coin_code=BCC",
])
async def test_bad_query_parameters_are_a_400_without_upstream_calls(
    sim: RunningSimulator, gw: RunningGateway, path: str
) -> None:
    status, body, _ = await gw.call("GET", path, gw.token())
    assert (status, body["error"]["code"]) == (400, "bad_query")
    assert await upstream_calls(sim) == {}

