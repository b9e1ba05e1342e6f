"""Market activity against a bare exchange with a fixed clock: determinism, a live but sane book."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from simulator.activity import MAX_PER_SIDE, Activity
from simulator.config import SimConfig, load_config
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.engine.model import Order, Side

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "simulator.yaml"
NOW = 1_700_000_000.0
Call = tuple[str, int, str, int, str, str]


class RecordingExchange(Exchange):
    """An exchange that remembers every order placed on it, in order."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config, clock=lambda: NOW)
        self.calls: list[Call] = []

    def put_limit(
        self, user: int, market: str, side: int, amount: str, price: str, source: str
    ) -> Order:
        self.calls.append(("limit", user, market, side, amount, price))
        return super().put_limit(user, market, side, amount, price, source)

    def put_market(self, user: int, market: str, side: int, amount: str, source: str) -> Order:
        self.calls.append(("market", user, market, side, amount, ""))
        return super().put_market(user, market, side, amount, source)


class RefusingExchange(Exchange):
    """An engine whose queues are always backed up after the books are seeded."""

    refuse = False

    def put_limit(
        self, user: int, market: str, side: int, amount: str, price: str, source: str
    ) -> Order:
        if self.refuse:
            raise EngineError(ErrorKind.SERVICE_UNAVAILABLE)
        return super().put_limit(user, market, side, amount, price, source)


def run_activity(seed: int, steps: int) -> tuple[RecordingExchange, Activity]:
    exchange = RecordingExchange(load_config(CONFIG_PATH))
    activity = Activity(exchange, rate=100, seed=seed)
    activity.seed_books()
    for _ in range(steps):
        activity.step()
    return exchange, activity


def test_same_seed_gives_the_same_orders() -> None:
    first, _ = run_activity(seed=11, steps=1500)
    second, _ = run_activity(seed=11, steps=1500)
    other, _ = run_activity(seed=12, steps=1500)
    assert len(first.calls) > 1000
    assert first.calls == second.calls
    assert first.calls != other.calls


def test_activity_accounts_are_not_configured_accounts() -> None:
    exchange, activity = run_activity(seed=1, steps=0)
    configured = {account.user_id for account in exchange.config.accounts}
    assert {activity.maker, activity.taker}.isdisjoint(configured)
    assert activity.maker != activity.taker


def test_seeded_books_are_two_sided_around_the_initial_price() -> None:
    exchange, _ = run_activity(seed=3, steps=0)
    for state in exchange.markets.values():
        best_ask, best_bid = state.asks.best(), state.bids.best()
        assert best_ask is not None
        assert best_bid is not None
        assert best_bid.price < state.spec.initial_price < best_ask.price
        assert len(state.asks) >= 3
        assert len(state.bids) >= 3


def test_books_stay_two_sided_and_uncrossed_while_deals_happen() -> None:
    exchange, activity = run_activity(seed=5, steps=0)
    for _ in range(30):
        for _ in range(100):
            activity.step()
        for state in exchange.markets.values():
            best_ask, best_bid = state.asks.best(), state.bids.best()
            assert best_ask is not None, state.spec.name
            assert best_bid is not None, state.spec.name
            assert best_bid.price < best_ask.price
    for state in exchange.markets.values():
        prices = {deal.price for deal in state.tape}
        assert len(state.tape) > 20, state.spec.name
        assert len(prices) > 3, state.spec.name


def test_resting_activity_orders_stay_bounded() -> None:
    exchange, activity = run_activity(seed=9, steps=8000)
    counts: dict[tuple[int, str, Side], int] = {}
    for order in exchange.resting_orders():
        key = (order.user, order.market, order.side)
        counts[key] = counts.get(key, 0) + 1
    assert counts
    assert max(counts.values()) <= MAX_PER_SIDE
    assert all(user == activity.maker for user, _, _ in counts)


def places(text: str) -> int:
    return len(text.partition(".")[2])


def test_orders_respect_market_precision_and_minimum() -> None:
    exchange, activity = run_activity(seed=21, steps=2000)
    for kind, user, market, _side, amount, price in exchange.calls:
        spec = exchange.config.markets[market]
        if kind == "limit" and user == activity.maker:
            assert places(price) <= spec.money_precision
        assert places(amount) <= spec.stock_precision
        if kind == "limit":
            assert Decimal(amount) >= spec.order_min_vol or user == activity.taker


def test_market_orders_only_where_enabled() -> None:
    exchange, _ = run_activity(seed=4, steps=3000)
    markets = {market for kind, _, market, *_ in exchange.calls if kind == "market"}
    enabled = {name for name, spec in exchange.config.markets.items() if spec.market_order_enabled}
    assert markets == enabled


def test_engine_errors_skip_the_event() -> None:
    exchange = RefusingExchange(load_config(CONFIG_PATH), clock=lambda: NOW)
    activity = Activity(exchange, rate=100, seed=2)
    activity.seed_books()
    exchange.refuse = True
    for _ in range(300):
        activity.step()
    assert exchange.orders_placed > 0


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Activity(Exchange(load_config(CONFIG_PATH)), rate=0, seed=0)


class CountingActivity(Activity):
    def __init__(self, exchange: Exchange, target: int) -> None:
        super().__init__(exchange, rate=5000, seed=0)
        self.steps = 0
        self.target = target
        self.reached = asyncio.Event()

    def step(self) -> None:
        super().step()
        self.steps += 1
        if self.steps >= self.target:
            self.reached.set()


async def test_run_keeps_stepping_until_cancelled() -> None:
    activity = CountingActivity(Exchange(load_config(CONFIG_PATH)), target=500)
    activity.seed_books()
    task = asyncio.create_task(activity.run())
    await asyncio.wait_for(activity.reached.wait(), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert activity.steps >= 500
