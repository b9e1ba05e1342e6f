"""Balances per (user, asset): an available and a frozen bucket, and the history of changes.

Every change to a user's total writes a history row (``balance`` = available + frozen after the
change); moving funds between available and frozen does not. Values are kept truncated to the
asset's stored precision, as the engine does.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping
from decimal import Decimal

from gateway.core.decimals import truncate
from simulator.config import AssetSpec
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.model import HISTORY_KEPT, ZERO, BalanceRow

Key = tuple[int, str]


class Balances:
    def __init__(self, assets: Mapping[str, AssetSpec]) -> None:
        self._assets = assets
        self._available: defaultdict[Key, Decimal] = defaultdict(Decimal)
        self._frozen: defaultdict[Key, Decimal] = defaultdict(Decimal)
        self._history: defaultdict[Key, deque[BalanceRow]] = defaultdict(
            lambda: deque(maxlen=HISTORY_KEPT))

    def available(self, user: int, asset: str) -> Decimal:
        return self._available.get((user, asset), ZERO)

    def frozen(self, user: int, asset: str) -> Decimal:
        return self._frozen.get((user, asset), ZERO)

    def total(self, user: int, asset: str) -> Decimal:
        return self.available(user, asset) + self.frozen(user, asset)

    def history(self, user: int, asset: str) -> list[BalanceRow]:
        """Rows oldest first (the newest ``HISTORY_KEPT`` of them)."""
        return list(self._history.get((user, asset), ()))

    def keys(self) -> list[Key]:
        return sorted(set(self._available) | set(self._frozen))

    def change(
        self, user: int, asset: str, amount: Decimal, business: str,
        detail: dict[str, object], now: float,
    ) -> None:
        """Add ``amount`` (negative to take) to the available bucket and record it."""
        amount = self._saved(asset, amount)
        key = (user, asset)
        if self._available[key] + amount < 0:
            raise EngineError(ErrorKind.BALANCE_NOT_ENOUGH)
        self._available[key] += amount
        self._record(key, amount, business, detail, now)

    def spend_frozen(
        self, user: int, asset: str, amount: Decimal, business: str,
        detail: dict[str, object], now: float,
    ) -> None:
        key = (user, asset)
        self._frozen[key] -= self._saved(asset, amount)
        self._record(key, -amount, business, detail, now)

    def freeze(self, user: int, asset: str, amount: Decimal) -> None:
        key, amount = (user, asset), self._saved(asset, amount)
        if self._available[key] < amount:
            raise EngineError(ErrorKind.BALANCE_NOT_ENOUGH)
        self._available[key] -= amount
        self._frozen[key] += amount

    def unfreeze(self, user: int, asset: str, amount: Decimal) -> None:
        key, amount = (user, asset), self._saved(asset, amount)
        self._frozen[key] -= amount
        self._available[key] += amount

    def _saved(self, asset: str, amount: Decimal) -> Decimal:
        return truncate(amount, self._assets[asset].prec_save)

    def _record(
        self, key: Key, change: Decimal, business: str, detail: dict[str, object], now: float
    ) -> None:
        balance = self._available[key] + self._frozen[key]
        self._history[key].append(BalanceRow(now, key[1], business, change, balance, detail))
