"""Who is calling: a gateway user, the upstream account it trades for, its scopes and markets.

Pure data. A ``Principal`` exists only after a token was verified against the user directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    MARKET_READ = "market:read"
    ORDERS_READ = "orders:read"
    ORDERS_WRITE = "orders:write"
    # Sees and cancels every order of its account, not only its own (``admin`` implies it).
    ORDERS_DESK = "orders:desk"
    BALANCE_READ = "balance:read"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


def format_scopes(scopes: frozenset[Scope]) -> str:
    return " ".join(sorted(scopes))


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    account: str
    scopes: frozenset[Scope]
    # None means every market.
    markets: frozenset[str] | None
    token_id: str
    issued_at: float
    expires_at: float

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    @property
    def desk_wide(self) -> bool:
        """Whether this caller sees the whole account's orders, not only its own."""
        return Scope.ORDERS_DESK in self.scopes or Scope.ADMIN in self.scopes

    def may_trade(self, market: str) -> bool:
        return self.markets is None or market in self.markets
