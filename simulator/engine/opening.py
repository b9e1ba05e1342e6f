"""Opening an exchange: the configured accounts' fee rates and starting balances, as deposits."""

from __future__ import annotations

import time
from collections.abc import Callable

from simulator.config import SimConfig
from simulator.engine.exchange import Exchange


def open_exchange(config: SimConfig, clock: Callable[[], float] = time.time) -> Exchange:
    exchange = Exchange(config, clock)
    for account in config.accounts:
        if account.fee_rates is not None:
            exchange.set_fee_rates(account.user_id, account.fee_rates)
        for asset, amount in account.balances.items():
            if amount > 0:
                exchange.deposit(account.user_id, asset, amount, exchange.next_business_id())
    return exchange
