"""The parameters of Expie's public WebSocket methods, checked as the exchange checks them.

``parse_call(method, params)`` turns a JSON-RPC request's params into a typed call or raises
``InvalidParams`` (Expie's code 1, "invalid argument"), so the gateway refuses a bad call itself
and never forwards it. Rules (notes section 3): market names and interval texts are under 16
bytes; ``depth.subscribe`` takes exactly ``[market, limit, interval]`` with ``limit`` in the
allowed list and ``interval`` numerically one of the allowed intervals; ``depth.query`` takes
any ``0 <= limit <= 101`` and ``interval >= 0``; ``price``/``deals`` subscriptions take a list
of markets (possibly empty) that replaces the previous one; ``deals.query`` takes
``[market, limit 1..10000, last_id]``. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from gateway.core.decimals import parse_decimal
from gateway.core.jsonrpc import INVALID_ARGUMENT, JsonValue

MAX_NAME_BYTES: Final = 15
MAX_QUERY_LIMIT: Final = 101
MAX_DEALS_LIMIT: Final = 10_000
SUBSCRIBE_LIMITS: Final = (1, 5, 10, 20, 30, 50, 100)
SUBSCRIBE_INTERVALS: Final = ("0", "0.00000001", "0.0000001", "0.000001", "0.00001", "0.0001",
                              "0.001", "0.01", "0.1")


class InvalidParams(ValueError):
    """Expie's code 1; ``message`` also says what is wrong (Expie says only "invalid argument")."""

    code = INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = f"invalid argument: {message}"


@dataclass(frozen=True, slots=True)
class DepthCall:
    market: str
    limit: int
    interval: Decimal
    # The client's own text: "0.1" and "0.10" are different subscriptions, as in Expie.
    interval_text: str


@dataclass(frozen=True, slots=True)
class MarketsCall:
    markets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MarketCall:
    market: str


@dataclass(frozen=True, slots=True)
class DealsQuery:
    market: str
    limit: int
    last_id: int


@dataclass(frozen=True, slots=True)
class NoParams:
    """Methods whose params Expie ignores (ping, time, unsubscribes)."""


Call = DepthCall | MarketsCall | MarketCall | DealsQuery | NoParams
_ALLOWED_INTERVALS: Final = frozenset(Decimal(text) for text in SUBSCRIBE_INTERVALS)
METHODS: Final = frozenset({
    "server.ping", "server.time", "server.auth", "depth.subscribe", "depth.unsubscribe",
    "depth.query", "price.subscribe", "price.unsubscribe", "price.query", "deals.subscribe",
    "deals.unsubscribe", "deals.query"})


def parse_call(method: str, params: list[JsonValue]) -> Call:
    """The typed params of ``method`` (one of ``METHODS``); ``InvalidParams`` if they are bad."""
    if method == "depth.subscribe":
        return _depth_subscribe(params)
    if method == "depth.query":
        return _depth_query(params)
    if method in ("price.subscribe", "deals.subscribe"):
        return MarketsCall(tuple(_market(value) for value in params))
    if method == "price.query":
        return MarketCall(_market(_arity(params, 1)[0]))
    if method == "deals.query":
        market, limit, last_id = _arity(params, 3)
        count = _integer(limit, "limit")
        if not 1 <= count <= MAX_DEALS_LIMIT:
            raise InvalidParams(f"limit must be 1 to {MAX_DEALS_LIMIT}")
        return DealsQuery(_market(market), count, _integer(last_id, "last_id"))
    return NoParams()



def _depth_subscribe(params: list[JsonValue]) -> DepthCall:
    call = _depth(params)
    if call.limit not in SUBSCRIBE_LIMITS:
        raise InvalidParams(f"limit must be one of {', '.join(map(str, SUBSCRIBE_LIMITS))}")
    if call.interval not in _ALLOWED_INTERVALS:
        raise InvalidParams(f"interval must be one of {', '.join(SUBSCRIBE_INTERVALS)}")
    return call


def _depth_query(params: list[JsonValue]) -> DepthCall:
    call = _depth(params)
    if not 0 <= call.limit <= MAX_QUERY_LIMIT:
        raise InvalidParams(f"limit must be 0 to {MAX_QUERY_LIMIT}")
    return call


def _depth(params: list[JsonValue]) -> DepthCall:
    market, limit, interval = _arity(params, 3)
    text = _short_text(interval, "interval")
    value = parse_decimal(text) if text == text.strip() else None
    if value is None or value < 0:
        raise InvalidParams("interval must be a non-negative decimal string")
    return DepthCall(_market(market), _integer(limit, "limit"), value, text)


def _arity(params: list[JsonValue], count: int) -> list[JsonValue]:
    if len(params) != count:
        raise InvalidParams(f"expected {count} params, got {len(params)}")
    return params


def _market(value: JsonValue) -> str:
    return _short_text(value, "market")


def _short_text(value: JsonValue, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParams(f"{name} must be a non-empty string")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise InvalidParams(f"{name} must be under {MAX_NAME_BYTES + 1} bytes")
    return value


def _integer(value: JsonValue, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParams(f"{name} must be an integer")
    return value
