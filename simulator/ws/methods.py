"""Expie's WebSocket methods: parameter checks, the engine reads behind queries, subscribe rules.

A handler runs to completion without awaiting, and its reply is queued before the pushes it
produces, so a client always sees ``{"status": "success"}`` before the first push of a new
subscription. Every ``*.subscribe`` replaces the connection's previous subscription of that
channel. Unknown methods get no reply unless the configuration asks for code 4.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, cast

from gateway.core.decimals import parse_decimal
from gateway.core.jsonrpc import (
    METHOD_NOT_FOUND,
    JsonValue,
    Request,
    encode_error,
    encode_result,
)
from simulator.config import WsSettings
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.ws.channels import Channels
from simulator.ws.deals import query_deals
from simulator.ws.depth import DepthKey, query_depth
from simulator.ws.price import query_price
from simulator.ws.session import Session

# accessws keeps market names and intervals in 16-byte C strings, terminator included.
MAX_NAME_BYTES: Final = 15
SUCCESS: Final[JsonValue] = {"status": "success"}


@dataclass(frozen=True, slots=True)
class Outcome:
    result: JsonValue
    pushes: tuple[bytes, ...] = ()


Handler = Callable[[Session, list[JsonValue]], Outcome]


def invalid() -> EngineError:
    return EngineError(ErrorKind.INVALID_ARGUMENT)


def _arity(params: list[JsonValue], count: int) -> list[JsonValue]:
    if len(params) != count:
        raise invalid()
    return params


def _text(value: JsonValue) -> str:
    if not isinstance(value, str):
        raise invalid()
    return value


def _short_text(value: JsonValue) -> str:
    text = _text(value)
    if len(text.encode()) > MAX_NAME_BYTES:
        raise invalid()
    return text


def _integer(value: JsonValue) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid()
    return value


def _decimal(value: JsonValue) -> Decimal:
    text = _text(value)
    parsed = parse_decimal(text) if text == text.strip() else None
    if parsed is None:
        raise invalid()
    return parsed


class Methods:
    def __init__(
        self, exchange: Exchange, settings: WsSettings, channels: Channels,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._exchange = exchange
        self._settings = settings
        self._channels = channels
        self._clock = clock
        self._intervals = frozenset(_decimal(text) for text in settings.depth_intervals)
        self._table: dict[str, Handler] = {
            "server.ping": lambda _session, _params: Outcome("pong"),
            "server.time": lambda _session, _params: Outcome(int(self._clock())),
            "depth.query": self._depth_query,
            "depth.subscribe": self._depth_subscribe,
            "depth.unsubscribe": self._depth_unsubscribe,
            "price.query": self._price_query,
            "price.subscribe": self._price_subscribe,
            "price.unsubscribe": self._price_unsubscribe,
            "deals.query": self._deals_query,
            "deals.subscribe": self._deals_subscribe,
            "deals.unsubscribe": self._deals_unsubscribe,
        }

    def dispatch(self, session: Session, request: Request) -> None:
        """Answer ``request`` on ``session``: the reply, then any pushes it causes."""
        handler = self._table.get(request.method)
        if handler is None:
            if self._settings.unknown_method_error:
                session.send(encode_error(request.id, METHOD_NOT_FOUND).encode())
            return
        try:
            outcome = handler(session, request.params)
        except EngineError as exc:
            session.send(encode_error(request.id, exc.code, exc.message).encode())
            return
        session.send(encode_result(request.id, outcome.result).encode())
        for push in outcome.pushes:
            session.send(push)

    def _depth_query(self, _session: Session, params: list[JsonValue]) -> Outcome:
        market, limit, interval = _arity(params, 3)
        view = query_depth(self._exchange, _text(market), _integer(limit), _decimal(interval))
        return Outcome(cast(JsonValue, view.to_wire()))

    def _depth_subscribe(self, session: Session, params: list[JsonValue]) -> Outcome:
        market, limit, interval = _arity(params, 3)
        key = DepthKey(_short_text(market), _integer(limit), _short_text(interval))
        if key.limit <= 0:
            raise invalid()
        # Expie drops the old subscription here, before checking the configured lists.
        self._channels.depth.unsubscribe(session)
        if key.limit not in self._settings.depth_limits or not self._allowed_interval(key.interval):
            raise invalid()
        cached = self._channels.depth.subscribe(session, key)
        return Outcome(SUCCESS, (cached,) if cached is not None else ())

    def _allowed_interval(self, interval: str) -> bool:
        try:
            return _decimal(interval) in self._intervals
        except EngineError:
            return False

    def _depth_unsubscribe(self, session: Session, _params: list[JsonValue]) -> Outcome:
        self._channels.depth.unsubscribe(session)
        return Outcome(SUCCESS)

    def _price_query(self, _session: Session, params: list[JsonValue]) -> Outcome:
        (market,) = _arity(params, 1)
        return Outcome(query_price(self._exchange, _text(market)))

    def _price_subscribe(self, session: Session, params: list[JsonValue]) -> Outcome:
        channel = self._channels.price
        channel.unsubscribe(session)
        for value in params:
            # Entries before a bad one stay subscribed, as in Expie.
            channel.subscribe(session, [_short_text(value)])
        return Outcome(SUCCESS, tuple(channel.initial_pushes(session)))

    def _price_unsubscribe(self, session: Session, _params: list[JsonValue]) -> Outcome:
        self._channels.price.unsubscribe(session)
        return Outcome(SUCCESS)

    def _deals_query(self, _session: Session, params: list[JsonValue]) -> Outcome:
        market, limit, last_id = _arity(params, 3)
        deals = query_deals(self._exchange, _text(market), _integer(limit), _integer(last_id))
        return Outcome(cast(JsonValue, deals))

    def _deals_subscribe(self, session: Session, params: list[JsonValue]) -> Outcome:
        channel = self._channels.deals
        channel.unsubscribe(session)
        for value in params:
            channel.subscribe(session, [_short_text(value)])
        return Outcome(SUCCESS, tuple(channel.initial_pushes(session)))

    def _deals_unsubscribe(self, session: Session, _params: list[JsonValue]) -> Outcome:
        self._channels.deals.unsubscribe(session)
        return Outcome(SUCCESS)
