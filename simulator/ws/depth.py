"""The depth channel: one subscription per connection, shared per ``(market, limit, interval)`` key.

Each poll reads the book once per key with subscribers and offers one encoded frame to all of the
key's sessions: the first result as a clean snapshot, later ones as Expie's diff against the
previous poll (nothing when nothing changed), or a clean snapshot again on the first change after
``full_snapshot_every`` seconds. Keys left without subscribers are deleted at the next poll, as
Expie does; a key whose market the engine rejects is deleted with its subscribers.

No I/O and no clock here: the server calls ``poll(now)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import cast

from gateway.core.decimals import ENGINE_CONTEXT, parse_decimal
from gateway.core.depth_book import DepthView, diff_views
from gateway.core.jsonrpc import JsonValue, encode_notification
from simulator.engine.errors import EngineError, ErrorKind
from simulator.engine.exchange import Exchange
from simulator.ws.session import Session

MAX_QUERY_LIMIT = 101


@dataclass(frozen=True, slots=True)
class DepthKey:
    market: str
    limit: int
    # The client's own text: "0.1" and "0.10" are different keys, as in Expie.
    interval: str


@dataclass(slots=True, eq=False)
class _Subscribers:
    interval: Decimal
    sessions: dict[Session, None] = field(default_factory=dict)
    snapshot: DepthView | None = None
    last_full: float = 0.0
    clean_frame: bytes | None = None


def query_depth(exchange: Exchange, market: str, limit: int, interval: Decimal) -> DepthView:
    """The engine's ``order.depth``: market must exist, ``0 <= limit <= 101``, ``interval >= 0``."""
    if limit < 0 or limit > MAX_QUERY_LIMIT or interval < 0:
        raise EngineError(ErrorKind.INVALID_ARGUMENT)
    state = exchange.market(market)
    try:
        with localcontext(ENGINE_CONTEXT):
            return state.depth(limit, interval)
    except ArithmeticError as exc:
        # An interval too large for the engine's 34 digits at the market's precision.
        raise EngineError(ErrorKind.INVALID_ARGUMENT) from exc


def encode_depth(clean: bool, body: dict[str, list[list[str]]], market: str) -> bytes:
    return encode_notification("depth.update", [clean, cast(JsonValue, body), market]).encode()


class DepthChannel:
    def __init__(self, exchange: Exchange, full_snapshot_every: float) -> None:
        self._exchange = exchange
        self._full_every = full_snapshot_every
        self._keys: dict[DepthKey, _Subscribers] = {}
        self._by_session: dict[Session, DepthKey] = {}

    def subscribe(self, session: Session, key: DepthKey) -> bytes | None:
        """Add ``session`` to ``key``; the cached clean snapshot to push after the reply, if any."""
        self.unsubscribe(session)
        subscribers = self._keys.get(key)
        if subscribers is None:
            interval = parse_decimal(key.interval)
            if interval is None:
                raise EngineError(ErrorKind.INVALID_ARGUMENT)
            subscribers = self._keys[key] = _Subscribers(interval)
        subscribers.sessions[session] = None
        self._by_session[session] = key
        return self._cached_frame(key, subscribers)

    def unsubscribe(self, session: Session) -> None:
        key = self._by_session.pop(session, None)
        if key is not None:
            self._keys[key].sessions.pop(session, None)

    def counts(self) -> dict[str, int]:
        return dict(Counter(key.market for key in self._by_session.values()))

    def poll(self, now: float) -> None:
        for key, subscribers in list(self._keys.items()):
            if not subscribers.sessions:
                del self._keys[key]
                continue
            try:
                view = query_depth(self._exchange, key.market, key.limit, subscribers.interval)
            except EngineError:
                self._drop_key(key)
                continue
            frame = self._next_frame(key, subscribers, view, now)
            if frame is not None:
                for session in subscribers.sessions:
                    session.send(frame)

    def _next_frame(
        self, key: DepthKey, subscribers: _Subscribers, view: DepthView, now: float
    ) -> bytes | None:
        previous = subscribers.snapshot
        if previous is None:
            return self._clean_push(key, subscribers, view, now)
        diff = diff_views(previous, view, key.limit)
        if not diff:
            return None
        if now - subscribers.last_full >= self._full_every:
            return self._clean_push(key, subscribers, view, now)
        subscribers.snapshot, subscribers.clean_frame = view, None
        return encode_depth(False, diff, key.market)

    def _clean_push(
        self, key: DepthKey, subscribers: _Subscribers, view: DepthView, now: float
    ) -> bytes:
        subscribers.snapshot, subscribers.clean_frame = view, None
        subscribers.last_full = now
        frame = self._cached_frame(key, subscribers)
        assert frame is not None
        return frame

    @staticmethod
    def _cached_frame(key: DepthKey, subscribers: _Subscribers) -> bytes | None:
        if subscribers.snapshot is None:
            return None
        if subscribers.clean_frame is None:
            subscribers.clean_frame = encode_depth(True, subscribers.snapshot.to_wire(), key.market)
        return subscribers.clean_frame

    def _drop_key(self, key: DepthKey) -> None:
        for session in self._keys.pop(key).sessions:
            self._by_session.pop(session, None)
