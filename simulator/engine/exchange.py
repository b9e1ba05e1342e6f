"""The exchange: places, matches and cancels orders, moves balances, keeps history.

Semantics follow Expie's ViaBTC engine (see docs/simulator.md): validation order, price-time
priority, maker-price fills, fees (seller pays in money, buyer in stock), freezing of resting
orders, market orders that finish at once, finished-order history rules. Every public method runs
in the engine's decimal context. No I/O; time comes from the injected clock.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation, localcontext
from functools import wraps
from typing import ParamSpec, TypeVar

from gateway.core.decimals import ENGINE_CONTEXT, parse_decimal, render, truncate
from simulator.config import FeeRates, SimConfig
from simulator.engine.balances import Balances
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.market import MarketState
from simulator.engine.model import (
    HISTORY_KEPT,
    ORDERS_WITH_DEALS_KEPT,
    ZERO,
    MarketDeal,
    Order,
    OrderDeal,
    OrderType,
    Role,
    Side,
)

P = ParamSpec("P")
R = TypeVar("R")
MAX_SOURCE_LENGTH = 30


def in_engine_context(method: Callable[P, R]) -> Callable[P, R]:
    @wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext(ENGINE_CONTEXT):
            return method(*args, **kwargs)

    return wrapper


class Exchange:
    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.markets = {name: MarketState(spec) for name, spec in config.markets.items()}
        self.balances = Balances(config.assets)
        self.collected_fees: defaultdict[str, Decimal] = defaultdict(Decimal)
        self._fee_overrides: dict[int, FeeRates] = {}
        self._resting: dict[int, Order] = {}
        self._pending: defaultdict[tuple[int, str], dict[int, Order]] = defaultdict(dict)
        self._finished: defaultdict[tuple[int, str], deque[Order]] = defaultdict(
            lambda: deque(maxlen=HISTORY_KEPT))
        self._order_deals: dict[int, list[OrderDeal]] = {}
        self._updates: set[tuple[int, str, str, int]] = set()
        self._last_order_id = 0
        self._last_deal_id = 0
        self._last_business_id = 0
        self.orders_placed = 0
        self.orders_cancelled = 0

    def set_fee_rates(self, user: int, rates: FeeRates) -> None:
        self._fee_overrides[user] = rates

    def market(self, name: str) -> MarketState:
        state = self.markets.get(name)
        if state is None or not state.spec.enabled:
            raise EngineError(ErrorKind.INVALID_ARGUMENT)
        return state

    @in_engine_context
    def put_limit(
        self, user: int, market: str, side: int, amount: str, price: str, source: str
    ) -> Order:
        state, order_side = self.market(market), _side(side)
        spec = state.spec
        quantity = _positive(amount, spec.stock_precision)
        limit_price = _positive(price, spec.engine_money_precision)
        taker_rate, maker_rate = self._rates(user, market)
        _check_source(source)
        if order_side is Side.SELL:
            needed, asset = quantity, spec.stock
        else:
            needed, asset = quantity * limit_price, spec.money
        if self.balances.available(user, asset) < needed:
            raise EngineError(ErrorKind.BALANCE_NOT_ENOUGH)
        if quantity < spec.order_min_vol:
            raise EngineError(ErrorKind.AMOUNT_TOO_SMALL)
        order = self._new_order(state, OrderType.LIMIT, order_side, user, limit_price, quantity,
                                taker_rate, maker_rate, source)
        self._match_limit(state, order)
        if order.left == 0:
            self._finish(order)
        else:
            self._rest(state, order)
        return order

    @in_engine_context
    def put_market(self, user: int, market: str, side: int, amount: str, source: str) -> Order:
        state, order_side = self.market(market), _side(side)
        spec = state.spec
        if not spec.market_order_enabled:
            raise EngineError(ErrorKind.INVALID_ARGUMENT, "market order not enabled")
        quantity = _positive(amount, spec.stock_precision)
        taker_rate, _ = self._rates(user, market)
        _check_source(source)
        opposite = state.opposite(order_side).best()
        if order_side is Side.SELL:
            if self.balances.available(user, spec.stock) < quantity:
                raise EngineError(ErrorKind.BALANCE_NOT_ENOUGH)
            if opposite is None:
                raise EngineError(ErrorKind.NO_ENOUGH_TRADER)
            too_small = (quantity < spec.order_min_vol
                         or quantity * opposite.price < spec.market_order_min_money)
        else:
            if self.balances.available(user, spec.money) < quantity:
                raise EngineError(ErrorKind.BALANCE_NOT_ENOUGH)
            if opposite is None:
                raise EngineError(ErrorKind.NO_ENOUGH_TRADER)
            too_small = (quantity < opposite.price * spec.order_min_vol
                         or quantity < spec.market_order_min_money)
        if too_small:
            raise EngineError(ErrorKind.AMOUNT_TOO_SMALL)
        order = self._new_order(state, OrderType.MARKET, order_side, user, ZERO, quantity,
                                taker_rate, ZERO, source)
        self._match_market(state, order)
        self._finish(order)
        return order

    @in_engine_context
    def cancel(self, user: int, market: str, order_id: int) -> Order:
        state = self.market(market)
        order = self._resting.get(order_id)
        if order is None or order.market != market:
            raise EngineError(ErrorKind.ORDER_NOT_FOUND)
        if order.user != user:
            raise EngineError(ErrorKind.USER_NOT_MATCH)
        state.take_off(order)
        del self._resting[order.id]
        del self._pending[(order.user, order.market)][order.id]
        asset = state.spec.stock if order.side is Side.SELL else state.spec.money
        self.balances.unfreeze(order.user, asset, order.freeze)
        order.freeze = ZERO
        if order.deal_stock > 0:
            self._finish(order)
        self.orders_cancelled += 1
        return order

    @in_engine_context
    def update_balance(
        self, user: int, asset: str, business: str, business_id: int, change: Decimal,
        detail: Mapping[str, object],
    ) -> None:
        """``balance.update``: a deposit (or withdrawal), refused when repeated."""
        if asset not in self.config.assets or change == 0:
            raise EngineError(ErrorKind.INVALID_ARGUMENT)
        key = (user, asset, business, business_id)
        if key in self._updates:
            raise EngineError(ErrorKind.REPEAT_UPDATE)
        if self.balances.available(user, asset) + change < 0:
            raise EngineError(ErrorKind.BALANCE_UPDATE_NOT_ENOUGH)
        self.balances.change(user, asset, change, business, {**detail, "id": business_id},
                             self.clock())
        self._updates.add(key)

    def next_business_id(self) -> int:
        self._last_business_id += 1
        return self._last_business_id

    def deposit(self, user: int, asset: str, amount: Decimal, business_id: int) -> None:
        detail = {"timestamp_action_id": int(self.clock())}
        self.update_balance(user, asset, "deposit", business_id, amount, detail)

    def pending(self, user: int, market: str) -> list[Order]:
        """The user's resting orders in ``market``, newest first."""
        self.market(market)
        return list(reversed(self._pending.get((user, market), {}).values()))

    def finished(self, user: int, market: str) -> list[Order]:
        """The user's finished orders in ``market``, newest (highest id) first.

        The history database is read ``ORDER BY id DESC``: an old order that finishes late still
        sorts below the newer ones that finished before it.
        """
        self.market(market)
        return sorted(self._finished.get((user, market), []), key=_order_id, reverse=True)

    def order_deals(self, order_id: int) -> list[OrderDeal]:
        """Fills of one order, newest first (any order: the engine does not check the owner)."""
        return list(reversed(self._order_deals.get(order_id, [])))

    def resting_orders(self) -> list[Order]:
        return list(self._resting.values())

    def _rates(self, user: int, market: str) -> tuple[Decimal, Decimal]:
        spec = self.markets[market].spec
        override = self._fee_overrides.get(user)
        taker, maker = (override.taker, override.maker) if override else (
            spec.taker_fee_rate, spec.maker_fee_rate)
        return truncate(taker, spec.fee_precision), truncate(maker, spec.fee_precision)

    def _new_order(
        self, state: MarketState, order_type: OrderType, side: Side, user: int, price: Decimal,
        amount: Decimal, taker_fee: Decimal, maker_fee: Decimal, source: str,
    ) -> Order:
        self._last_order_id += 1
        self.orders_placed += 1
        now = self.clock()
        return Order(id=self._last_order_id, market=state.spec.name, source=source,
                     type=order_type, side=side, user=user, ctime=now, mtime=now, price=price,
                     amount=amount, taker_fee=taker_fee, maker_fee=maker_fee, left=amount)

    def _match_limit(self, state: MarketState, taker: Order) -> None:
        book = state.opposite(taker.side)
        while taker.left > 0:
            maker = book.best_order()
            if maker is None or not _crosses(taker, maker.price):
                return
            self._fill(state, taker, maker, min(taker.left, maker.left))

    def _match_market(self, state: MarketState, taker: Order) -> None:
        book = state.opposite(taker.side)
        step = Decimal(1).scaleb(-state.spec.stock_precision)
        while taker.left > 0:
            maker = book.best_order()
            if maker is None:
                return
            if taker.side is Side.SELL:
                quantity = min(taker.left, maker.left)
            else:
                quantity = truncate(taker.left / maker.price, state.spec.stock_precision)
                while quantity > 0 and quantity * maker.price > taker.left:
                    quantity -= step
                quantity = min(quantity, maker.left)
            if quantity <= 0:
                return
            self._fill(state, taker, maker, quantity)

    def _fill(self, state: MarketState, taker: Order, maker: Order, quantity: Decimal) -> None:
        spec, price, now = state.spec, maker.price, self.clock()
        money = price * quantity
        self._last_deal_id += 1
        deal_id = self._last_deal_id
        for order, role, counterpart in ((taker, Role.TAKER, maker), (maker, Role.MAKER, taker)):
            rate = order.taker_fee if role is Role.TAKER else order.maker_fee
            fee = money * rate if order.side is Side.SELL else quantity * rate
            spent = money if order.type is OrderType.MARKET and order.side is Side.BUY else quantity
            order.left -= spent
            order.deal_stock += quantity
            order.deal_money += money
            order.deal_fee += fee
            order.mtime = now
            detail: dict[str, object] = {"a": render(quantity), "i": order.id, "m": spec.name,
                                         "p": render(price)}
            self._settle(spec.name, order, role, quantity, money, fee, rate, detail, now)
            self._remember_deal(order.id, OrderDeal(
                deal_id, now, order.user, role, price, quantity, money, fee, counterpart.id))
        state.opposite(taker.side).reduce(maker, quantity)
        state.record_deal(MarketDeal(deal_id, now, price, quantity, taker.side))
        if maker.left == 0:
            del self._resting[maker.id]
            del self._pending[(maker.user, maker.market)][maker.id]
            self._finish(maker)

    def _remember_deal(self, order_id: int, deal: OrderDeal) -> None:
        deals = self._order_deals.get(order_id)
        if deals is None:
            if len(self._order_deals) >= ORDERS_WITH_DEALS_KEPT:
                del self._order_deals[next(iter(self._order_deals))]
            deals = self._order_deals[order_id] = []
        deals.append(deal)

    def _settle(
        self, market: str, order: Order, role: Role, quantity: Decimal, money: Decimal,
        fee: Decimal, rate: Decimal, detail: dict[str, object], now: float,
    ) -> None:
        """Move one side's funds for one fill: the given asset (frozen for makers), then fee."""
        spec = self.markets[market].spec
        gives, give_amount, gets, get_amount = (
            (spec.stock, quantity, spec.money, money) if order.side is Side.SELL
            else (spec.money, money, spec.stock, quantity))
        if role is Role.MAKER:
            self.balances.spend_frozen(order.user, gives, give_amount, "trade", detail, now)
            order.freeze -= give_amount
        else:
            self.balances.change(order.user, gives, -give_amount, "trade", detail, now)
        self.balances.change(order.user, gets, get_amount, "trade", detail, now)
        if fee > 0:
            fee_detail = {**detail, "f": render(rate)}
            self.balances.change(order.user, gets, -fee, "trade", fee_detail, now)
            self.collected_fees[gets] += fee

    def _rest(self, state: MarketState, order: Order) -> None:
        asset, amount = ((state.spec.stock, order.left) if order.side is Side.SELL
                         else (state.spec.money, order.left * order.price))
        self.balances.freeze(order.user, asset, amount)
        order.freeze = amount
        state.rest(order)
        self._resting[order.id] = order
        self._pending[(order.user, order.market)][order.id] = order

    def _finish(self, order: Order) -> None:
        order.ftime = order.mtime
        self._finished[(order.user, order.market)].append(order)


def _side(value: int) -> Side:
    if value not in (Side.SELL, Side.BUY):
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    return Side(value)


def _positive(text: str, precision: int) -> Decimal:
    value = parse_decimal(text)
    if value is None:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    try:
        value = truncate(value, precision)
    except InvalidOperation:  # too many digits for the engine's 34-digit arithmetic
        raise EngineError(ErrorKind.INVALID_ARGUMENT) from None
    if value <= 0:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    return value


def _order_id(order: Order) -> int:
    return order.id


def _check_source(source: str) -> None:
    if len(source) > MAX_SOURCE_LENGTH:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)


def _crosses(taker: Order, maker_price: Decimal) -> bool:
    return maker_price <= taker.price if taker.side is Side.BUY else maker_price >= taker.price
