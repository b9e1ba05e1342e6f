"""What the engine's unit tests share: the state a user of the exchange can observe."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from simulator.engine.exchange import Exchange


def observable_state(ex: Exchange, users: Iterable[int]) -> object:
    """What a user of the exchange could observe; a rejected call must leave it as it was."""
    keys = ex.balances.keys()
    return (
        {key: (ex.balances.available(*key), ex.balances.frozen(*key)) for key in keys},
        {key: len(ex.balances.history(*key)) for key in keys},
        dict(ex.collected_fees),
        sorted((o.id, o.left, o.deal_stock, o.deal_money, o.deal_fee, o.mtime)
               for o in ex.resting_orders()),
        {name: (state.depth(1000, Decimal(0)), len(state.tape), state.last_price)
         for name, state in ex.markets.items()},
        {(user, market): (len(ex.pending(user, market)), len(ex.finished(user, market)))
         for user in users for market in ex.markets},
    )
