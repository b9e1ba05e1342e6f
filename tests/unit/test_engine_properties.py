"""The matching engine under random order flow: invariants that must hold after every step.

A hypothesis state machine plays limit orders (on a small price grid per market, with amounts
that are sometimes too small, not numbers, or beyond a user's means), market orders, cancels
(own, someone else's, in the wrong market, of unknown ids), deposits (some repeated) and clock
ticks, by users with different fee rates, on the shipped config's markets (one without fees, two
with, one taking market orders). Engine errors are legitimate outcomes of random input, and a
rejected call must change nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simulator.config import FeeRates, load_config
from simulator.engine.errors import EngineError
from simulator.engine.exchange import Exchange
from simulator.engine.model import Order, OrderType, Side
from tests.clock import FakeClock
from tests.engine_support import observable_state

# Passing takes seconds; a failure may need a minute or more to shrink to a short script.
pytestmark = pytest.mark.timeout(600)

CONFIG = load_config(Path(__file__).resolve().parents[2] / "config" / "simulator.yaml")
ZERO = Decimal(0)
DELTA = 424242  # an extra, poorly funded user with its own fee rates

# Fee overrides on top of the shipped ones (desk-alpha: 0.0006/0.0006, desk-beta: market rates).
EXTRA_FEES = {
    116480: FeeRates(maker=Decimal("0"), taker=Decimal("0.0025")),
    DELTA: FeeRates(maker=Decimal("0.0013"), taker=Decimal("0.00011")),
}
EXTRA_BALANCES = {DELTA: {"BTC": Decimal("0.05"), "ETH": Decimal("1"), "BCC": Decimal("0.5")}}
USERS = [account.user_id for account in CONFIG.accounts] + [DELTA]

PRICES = {
    "BCCBTC": ["0.1340", "0.1342", "0.1345", "0.13450000999", "0.1347", "0.135"],
    "BTGBTC": ["0.0157", "0.01575", "0.015813", "0.0159", "0.01590001", "0.016"],
    "ETHBTC": ["0.0515", "0.0518", "0.052", "0.0520009", "0.0522", "0.0525"],
}
AMOUNTS = ["0.0005", "0.001", "0.0123", "0.12345678", "0.5", "1", "2.5", "7", "40", "0.00001",
           "abc"]
MARKET_AMOUNTS = ["0.0005", "0.001", "0.004", "0.05", "0.12349", "0.3", "1", "5"]
ASSETS = sorted(CONFIG.assets)

# Codes a random but well-formed call may legitimately get back.
PUT_CODES = {1, 10, 11, 12}
CANCEL_CODES = {10, 11}


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.ex = Exchange(CONFIG, self.clock)
        self.deposited: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.orders: dict[int, Order] = {}
        self.last_order_id = 0
        self.last_deal_id = 0
        self.business_id = 0

    @initialize()
    def fund(self) -> None:
        for account in CONFIG.accounts:
            if account.fee_rates is not None:
                self.ex.set_fee_rates(account.user_id, account.fee_rates)
            for asset, amount in account.balances.items():
                self._deposit(account.user_id, asset, amount)
        for user, rates in EXTRA_FEES.items():
            self.ex.set_fee_rates(user, rates)
        for user, balances in EXTRA_BALANCES.items():
            for asset, amount in balances.items():
                self._deposit(user, asset, amount)

    def _deposit(self, user: int, asset: str, amount: Decimal) -> None:
        self.business_id += 1
        self.ex.deposit(user, asset, amount, self.business_id)
        self.deposited[asset] += amount

    def attempt(self, call: Callable[[], Order], codes: set[int]) -> Order | None:
        before = observable_state(self.ex, USERS)
        try:
            order = call()
        except EngineError as error:
            self.check_rejection(error, codes, before)
            return None
        event(f"accepted: {order.type.name.lower()} {'with' if order.deal_stock else 'no'} fills")
        return order

    def check_rejection(self, error: EngineError, codes: set[int], before: object) -> None:
        event(f"rejected: {error.code} {error.message}")
        assert error.code in codes, error
        after = observable_state(self.ex, USERS)
        assert after == before, f"rejected call ({error}) changed the state"

    # --- rules ---------------------------------------------------------------------------------

    @rule(
        user=st.sampled_from(USERS),
        market=st.sampled_from(["BCCBTC", "BTGBTC", "ETHBTC", "ETHBTC"]),
        side=st.sampled_from([1, 2, 1, 2, 1, 2, 3]),
        price=st.integers(0, 5),
        amount=st.sampled_from(AMOUNTS),
    )
    def put_limit(self, user: int, market: str, side: int, price: int, amount: str) -> None:
        limit = PRICES[market][price]
        order = self.attempt(
            lambda: self.ex.put_limit(user, market, side, amount, limit, "prop"), PUT_CODES)
        if order is None:
            return
        self._accepted(order)
        for deal in self.ex.order_deals(order.id):
            maker = self.orders[deal.deal_order_id]
            assert deal.price == maker.price, "fills trade at the maker's price"
            assert (deal.price <= order.price if order.side is Side.BUY
                    else deal.price >= order.price), "fills respect the taker's limit"
        resting = order.id in {o.id for o in self.ex.resting_orders()}
        assert resting == (order.left > 0)

    @rule(
        user=st.sampled_from(USERS),
        market=st.sampled_from(["ETHBTC", "ETHBTC", "ETHBTC", "BCCBTC"]),
        side=st.sampled_from([1, 2]),
        amount=st.sampled_from(MARKET_AMOUNTS),
    )
    def put_market(self, user: int, market: str, side: int, amount: str) -> None:
        order = self.attempt(
            lambda: self.ex.put_market(user, market, side, amount, "prop"), PUT_CODES)
        if order is None:
            assert market == "ETHBTC" or self.ex.markets[market].spec.market_order_enabled is False
            return
        assert self.ex.markets[market].spec.market_order_enabled
        self._accepted(order)
        assert order.deal_stock > 0
        assert order.ftime == order.mtime
        assert order.id not in {o.id for o in self.ex.resting_orders()}

    @rule(
        pick=st.integers(0, 10**6),
        owner=st.booleans(),
        right_market=st.sampled_from([True, True, True, False]),
    )
    def cancel_resting(self, pick: int, owner: bool, right_market: bool) -> None:
        resting = sorted(self.ex.resting_orders(), key=lambda o: o.id)
        if not resting:
            return
        target = resting[pick % len(resting)]
        user = target.user if owner else USERS[(USERS.index(target.user) + 1) % len(USERS)]
        market = target.market if right_market else next(
            name for name in sorted(self.ex.markets) if name != target.market)
        mtime = target.mtime
        order = self.attempt(lambda: self.ex.cancel(user, market, target.id), CANCEL_CODES)
        if order is None:
            assert not (owner and right_market)
            return
        assert owner
        assert right_market
        assert order is target
        assert order.mtime == mtime, "cancel does not touch mtime"
        assert order.id not in {o.id for o in self.ex.pending(user, market)}

    @rule(user=st.sampled_from(USERS), offset=st.integers(1, 5))
    def cancel_unknown(self, user: int, offset: int) -> None:
        market = sorted(self.ex.markets)[offset % len(self.ex.markets)]
        order_id = self.last_order_id + offset
        assert self.attempt(lambda: self.ex.cancel(user, market, order_id), {10}) is None

    @rule(
        user=st.sampled_from(USERS),
        asset=st.sampled_from(ASSETS),
        amount=st.sampled_from(["0.001", "0.5", "3"]),
        repeat=st.booleans(),
    )
    def deposit(self, user: int, asset: str, amount: str, repeat: bool) -> None:
        value = Decimal(amount)
        if not repeat:
            self._deposit(user, asset, value)
            return
        previous = self.business_id  # used by the last deposit of *someone*: maybe this user
        before = observable_state(self.ex, USERS)
        try:
            self.ex.deposit(user, asset, value, previous)
        except EngineError as error:
            self.check_rejection(error, {10}, before)  # "repeat update"
        else:
            self.deposited[asset] += value

    @rule(seconds=st.sampled_from([0.0, 0.000001, 0.25, 1.0, 3600.0]))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    def _accepted(self, order: Order) -> None:
        assert order.id == self.last_order_id + 1, "order ids are global and consecutive"
        self.last_order_id = order.id
        self.orders[order.id] = order
        new_deals = sorted(
            deal.id for state in self.ex.markets.values()
            for deal in state.deals_since(self.last_deal_id, 10_000))
        first = self.last_deal_id + 1
        assert new_deals == list(range(first, first + len(new_deals))), "deal ids are global"
        self.last_deal_id += len(new_deals)
        assert new_deals == sorted({d.id for d in self.ex.order_deals(order.id)})

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def all_invariants_hold(self) -> None:
        """One invariant hook (cheaper for hypothesis than eight); each check names its rule."""
        self.assets_are_conserved()
        self.nothing_is_negative()
        self.book_is_never_crossed_at_rest()
        self.order_quantities_add_up()
        self.frozen_is_what_resting_orders_need()
        self.depth_is_the_sum_of_resting_orders()
        self.fees_collected_are_the_orders_fees()
        self.history_balance_is_the_total()
        self.order_lists_match_the_book()

    def assets_are_conserved(self) -> None:
        totals: defaultdict[str, Decimal] = defaultdict(Decimal)
        keys = self.ex.balances.keys()
        for user, asset in keys:
            totals[asset] += self.ex.balances.total(user, asset)
        for asset in ASSETS:
            assert totals[asset] + self.ex.collected_fees[asset] == self.deposited[asset], asset

    def nothing_is_negative(self) -> None:
        keys = self.ex.balances.keys()
        for key in keys:
            assert self.ex.balances.available(*key) >= 0, key
            assert self.ex.balances.frozen(*key) >= 0, key
        assert all(fee >= 0 for fee in self.ex.collected_fees.values())

    def book_is_never_crossed_at_rest(self) -> None:
        for state in self.ex.markets.values():
            ask, bid = state.asks.best(), state.bids.best()
            if ask is not None and bid is not None:
                assert bid.price < ask.price, state.spec.name

    def order_quantities_add_up(self) -> None:
        for order in self.orders.values():
            assert order.left >= 0
            assert order.deal_stock >= 0
            if order.type is OrderType.MARKET and order.side is Side.BUY:
                assert order.left + order.deal_money == order.amount  # left counts money
            else:
                assert order.left + order.deal_stock == order.amount
        for order in self.ex.resting_orders():
            assert order.type is OrderType.LIMIT
            assert 0 < order.left <= order.amount

    def frozen_is_what_resting_orders_need(self) -> None:
        needed: defaultdict[tuple[int, str], Decimal] = defaultdict(Decimal)
        for order in self.ex.resting_orders():
            spec = self.ex.markets[order.market].spec
            if order.side is Side.SELL:
                needed[(order.user, spec.stock)] += order.left
            else:
                needed[(order.user, spec.money)] += order.left * order.price
        for key in set(self.ex.balances.keys()) | set(needed):
            assert self.ex.balances.frozen(*key) == needed[key], key

    def depth_is_the_sum_of_resting_orders(self) -> None:
        for name, state in self.ex.markets.items():
            sums: dict[Side, defaultdict[Decimal, Decimal]] = {
                Side.SELL: defaultdict(Decimal), Side.BUY: defaultdict(Decimal)}
            for order in self.ex.resting_orders():
                if order.market == name:
                    sums[order.side][order.price] += order.left
            view = state.depth(1000, ZERO)
            assert list(view.asks) == sorted(sums[Side.SELL].items())
            assert list(view.bids) == sorted(sums[Side.BUY].items(), reverse=True)

    def fees_collected_are_the_orders_fees(self) -> None:
        expected: defaultdict[str, Decimal] = defaultdict(Decimal)
        for order in self.orders.values():
            spec = self.ex.markets[order.market].spec
            expected[spec.money if order.side is Side.SELL else spec.stock] += order.deal_fee
        for asset in ASSETS:
            assert self.ex.collected_fees[asset] == expected[asset], asset

    def history_balance_is_the_total(self) -> None:
        keys = self.ex.balances.keys()
        for key in keys:
            rows = self.ex.balances.history(*key)
            if rows:
                assert rows[-1].balance == self.ex.balances.total(*key), key

    def order_lists_match_the_book(self) -> None:
        resting = {o.id for o in self.ex.resting_orders()}
        for user in USERS:
            for market in self.ex.markets:
                pending = [o.id for o in self.ex.pending(user, market)]
                finished = [o.id for o in self.ex.finished(user, market)]
                mine = [o for o in self.orders.values() if (o.user, o.market) == (user, market)]
                assert pending == sorted((o.id for o in mine if o.id in resting), reverse=True)
                assert finished == sorted(
                    (o.id for o in mine if o.id not in resting
                     and (o.deal_stock > 0 or o.type is OrderType.MARKET)),
                    reverse=True,
                ), "finished: every filled or market order, newest id first; no empty cancels"


EngineMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineProperties = EngineMachine.TestCase
