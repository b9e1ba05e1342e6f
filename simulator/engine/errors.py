"""Engine errors: the numeric codes and messages Expie's engine answers with.

Codes of 10 and above are method-specific (10 means "balance not enough" for a put and
"order not found" for a cancel), so each error names its kind as well as its code.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    INVALID_ARGUMENT = (1, "invalid argument")
    INTERNAL_ERROR = (2, "internal error")
    SERVICE_UNAVAILABLE = (3, "service unavailable")
    BALANCE_NOT_ENOUGH = (10, "balance not enough")
    AMOUNT_TOO_SMALL = (11, "amount too small")
    NO_ENOUGH_TRADER = (12, "no enough trader")
    ORDER_NOT_FOUND = (10, "order not found")
    USER_NOT_MATCH = (11, "user not match")
    REPEAT_UPDATE = (10, "repeat update")
    BALANCE_UPDATE_NOT_ENOUGH = (11, "balance not enough")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


class EngineError(Exception):
    def __init__(self, kind: ErrorKind, message: str | None = None) -> None:
        self.kind = kind
        self.code = kind.code
        self.message = message or kind.message
        super().__init__(f"{self.code}: {self.message}")
