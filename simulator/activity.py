"""Deterministic background market activity: a market maker and a taker trading in every market.

Owns two internal accounts (user ids no configured account uses, funded by deposits and topped
up when short) and the events they send to the engine: the maker re-quotes a two-sided book
around a bounded random walk and cancels stale quotes; the taker crosses the spread with a limit
order at the opposite best price, or a market order where the market allows them. One seeded
``random.Random`` drives every choice, so a seed always gives the same sequence of engine calls.

It uses the exchange's public methods only, never touches its internals, does no I/O (``run``
only sleeps) and keeps money in ``Decimal``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_UP, Decimal

from gateway.core.decimals import truncate
from simulator.config import FeeRates, MarketSpec
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.engine.model import Order, Side

log = logging.getLogger(__name__)

SOURCE = "sim.activity"
FUNDING = Decimal(10) ** 8
SEED_LEVELS = 5
QUOTE_LEVELS = 10
MAX_PER_SIDE = 40
MIN_MID_TICKS = 100
REQUOTE, CANCEL = 0.55, 0.70  # cumulative odds of each event; the rest are takes
MARKET_ORDER_ODDS = 0.4
MAX_BATCH = 200
MAX_BACKLOG = 1.0
ZERO_FEES = FeeRates(maker=Decimal(0), taker=Decimal(0))


@dataclass(slots=True)
class Quoter:
    """One market's quoting plan; prices are whole ticks of the advertised money precision."""

    spec: MarketSpec
    tick: Decimal
    mid: int
    low: int
    high: int
    step: int
    half_spread: int
    spacing: int
    min_amount: Decimal

    @classmethod
    def for_market(cls, spec: MarketSpec) -> Quoter:
        tick = Decimal(1).scaleb(-spec.money_precision)
        start = max(int(spec.initial_price / tick), MIN_MID_TICKS)
        unit = Decimal(1).scaleb(-spec.stock_precision)
        min_amount = max(spec.order_min_vol.quantize(unit, rounding=ROUND_UP), unit)
        return cls(spec=spec, tick=tick, mid=start, low=start // 2, high=start * 2,
                   step=max(1, start // 5000), half_spread=max(1, start // 1000),
                   spacing=max(1, start // 2000), min_amount=min_amount)

    def walk(self, rng: random.Random) -> None:
        self.mid = min(self.high, max(self.low, self.mid + rng.randint(-self.step, self.step)))

    def price(self, ticks: int) -> Decimal:
        return Decimal(ticks).scaleb(-self.spec.money_precision)

    def ticks(self, price: Decimal, rounding: str) -> int:
        return int((price / self.tick).to_integral_value(rounding=rounding))

    def amount(self, rng: random.Random) -> Decimal:
        return truncate(self.min_amount * rng.randint(10, 1000), self.spec.stock_precision)


class Activity:
    """The maker and taker of every enabled market, driven by one seeded generator."""

    def __init__(self, exchange: Exchange, rate: float, seed: int) -> None:
        if rate <= 0:
            raise ValueError("activity rate must be positive")
        self.exchange = exchange
        self.rate = rate
        self._rng = random.Random(seed)
        taken = {account.user_id for account in exchange.config.accounts}
        free = (user for user in range(1, len(taken) + 3) if user not in taken)
        self.maker, self.taker = next(free), next(free)
        self.quoters = [Quoter.for_market(state.spec) for name, state
                        in sorted(exchange.markets.items()) if state.spec.enabled]

    def seed_books(self) -> None:
        """Fund the two accounts and place ``SEED_LEVELS`` quotes on each side of every market."""
        for user in (self.maker, self.taker):
            self.exchange.set_fee_rates(user, ZERO_FEES)
            self._fund(user)
        for quoter in self.quoters:
            for level in range(SEED_LEVELS):
                offset = quoter.half_spread + level * quoter.spacing
                self._quote(quoter, Side.BUY, quoter.mid - offset)
                self._quote(quoter, Side.SELL, quoter.mid + offset)

    def step(self) -> None:
        """One event in one market; an event the engine refuses is skipped."""
        if not self.quoters:
            return
        quoter = self._rng.choice(self.quoters)
        roll = self._rng.random()
        try:
            if roll < REQUOTE:
                self._requote(quoter)
            elif roll < CANCEL:
                self._cancel_one(quoter)
            else:
                self._take(quoter)
        except EngineError as exc:
            if exc.kind is ErrorKind.BALANCE_NOT_ENOUGH:
                self._fund(self.maker)
                self._fund(self.taker)

    async def run(self) -> None:
        """``rate`` events a second until cancelled, several per wake-up when the rate is high."""
        loop = asyncio.get_running_loop()
        interval, due = 1.0 / self.rate, loop.time()
        try:
            while True:
                now = loop.time()
                due = max(due, now - MAX_BACKLOG)
                count = min(MAX_BATCH, int((now - due) / interval) + 1)
                for _ in range(count):
                    self.step()
                due += count * interval
                await asyncio.sleep(max(0.0, due - loop.time()))
        except Exception:
            log.exception("market activity stopped")
            raise

    def _fund(self, user: int) -> None:
        for asset in sorted(self.exchange.config.assets):
            self.exchange.deposit(user, asset, FUNDING, self.exchange.next_business_id())

    def _requote(self, quoter: Quoter) -> None:
        """Move the mid, drop quotes on its wrong side, add one quote on each side."""
        quoter.walk(self._rng)
        mid = quoter.price(quoter.mid)
        orders = self.exchange.pending(self.maker, quoter.spec.name)
        for order in orders:
            if (order.price >= mid) if order.side is Side.BUY else (order.price <= mid):
                self._cancel(order)
        for side, sign in ((Side.BUY, -1), (Side.SELL, 1)):
            level = self._rng.randint(0, QUOTE_LEVELS - 1)
            offset = quoter.half_spread + level * quoter.spacing
            self._make_room(quoter, side)
            self._quote(quoter, side, quoter.mid + sign * offset)

    def _make_room(self, quoter: Quoter, side: Side) -> None:
        """Keep at most ``MAX_PER_SIDE - 1`` quotes on ``side`` by cancelling the farthest."""
        mine = [o for o in self.exchange.pending(self.maker, quoter.spec.name) if o.side is side]
        if len(mine) >= MAX_PER_SIDE:
            farthest = min(mine, key=lambda o: o.price) if side is Side.BUY else max(
                mine, key=lambda o: o.price)
            self._cancel(farthest)

    def _quote(self, quoter: Quoter, side: Side, ticks: int) -> None:
        """A maker order at ``ticks``, moved away from the opposite best so it never takes."""
        state = self.exchange.markets[quoter.spec.name]
        opposite = state.opposite(side).best()
        if opposite is not None and side is Side.BUY:
            ticks = min(ticks, quoter.ticks(opposite.price, ROUND_CEILING) - 1)
        elif opposite is not None:
            ticks = max(ticks, quoter.ticks(opposite.price, ROUND_FLOOR) + 1)
        if ticks <= 0:
            return
        self.exchange.put_limit(self.maker, quoter.spec.name, int(side),
                                _text(quoter.amount(self._rng)), _text(quoter.price(ticks)),
                                SOURCE)

    def _cancel_one(self, quoter: Quoter) -> None:
        orders = self.exchange.pending(self.maker, quoter.spec.name)
        if orders:
            self._cancel(self._rng.choice(orders))

    def _cancel(self, order: Order) -> None:
        self.exchange.cancel(order.user, order.market, order.id)

    def _take(self, quoter: Quoter) -> None:
        """Cross the spread against the opposite best level, never deeper than that level."""
        side = self._rng.choice((Side.BUY, Side.SELL))
        level = self.exchange.markets[quoter.spec.name].opposite(side).best()
        wanted = quoter.amount(self._rng)
        use_market = self._rng.random() < MARKET_ORDER_ODDS
        if level is None:
            return
        quantity = truncate(min(wanted, level.total), quoter.spec.stock_precision)
        name = quoter.spec.name
        if use_market and quoter.spec.market_order_enabled:
            spend = quantity if side is Side.SELL else truncate(
                quantity * level.price, quoter.spec.stock_precision)
            self.exchange.put_market(self.taker, name, int(side), _text(spend), SOURCE)
            return
        order = self.exchange.put_limit(self.taker, name, int(side), _text(quantity),
                                        _text(level.price), SOURCE)
        if order.left > 0:
            self._cancel(order)


def _text(value: Decimal) -> str:
    return format(value, "f")
