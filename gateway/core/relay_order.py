"""The cluster relay's messages and a follower's place in its leader's stream.

A stream (one market's depth, or the price and deals of every market) has one leader at a time,
the replica holding its lease. The leader stamps every message with its lease's fencing token as
the ``epoch`` and a ``seq`` counting from 1 in that epoch, and writes, in the same atomic step as
each batch it publishes, a snapshot of its state at the last ``seq`` of the batch.

A follower applies a message only when it is the very next of the epoch it knows. Anything else —
a gap (pub/sub drops messages when a subscriber falls behind or reconnects), a new epoch (a new
leader), a message before the first snapshot — is a reason to resync: read the snapshot, then
apply what was buffered meanwhile past the snapshot's ``seq``. A follower never guesses: it holds
still (its clients see nothing) until the stream is whole again.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from gateway.core.jsonrpc import JsonValue

# Messages kept while a snapshot is on its way; past it the oldest go (and a gap shows).
BUFFER_LIMIT = 10_000


class Role(enum.Enum):
    """A replica's part in a stream."""

    LEADER = "leader"
    FOLLOWER = "follower"
    STANDALONE = "standalone"


def relay_nowhere(kind: str, data: JsonValue) -> bool:
    """Where a stream's changes go when no relay takes them (a single replica, a follower)."""
    return False


class RelayFormatError(ValueError):
    """A relay message or snapshot this gateway cannot read (another version, or corrupt)."""


@dataclass(frozen=True, slots=True)
class RelayMessage:
    epoch: int
    seq: int
    kind: str
    data: JsonValue

    def encode(self) -> str:
        return json.dumps([self.epoch, self.seq, self.kind, self.data], separators=(",", ":"))


def decode_message(text: str | bytes) -> RelayMessage:
    """A message as ``RelayMessage.encode`` wrote it; raises ``RelayFormatError``."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RelayFormatError(f"not JSON: {exc}") from exc
    if not (isinstance(value, list) and len(value) == 4):
        raise RelayFormatError("expected [epoch, seq, kind, data]")
    epoch, seq, kind, data = value
    if not (_count(epoch) and _count(seq) and isinstance(kind, str)):
        raise RelayFormatError("expected a whole epoch and seq and a kind")
    return RelayMessage(epoch, seq, kind, data)


class Position(NamedTuple):
    """Where a snapshot stands in its leader's stream."""

    epoch: int
    seq: int


class Step(NamedTuple):
    """What a follower does with what arrived: apply these messages, in order, and/or resync."""

    apply: tuple[RelayMessage, ...] = ()
    resync: bool = False


class RelayCursor:
    """A follower's position in one stream: synced at (epoch, seq), or buffering for a resync."""

    __slots__ = ("_buffer", "_position")

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self._position: Position | None = None
        self._buffer: deque[RelayMessage] = deque(maxlen=limit)

    @property
    def synced(self) -> bool:
        return self._position is not None

    @property
    def position(self) -> Position | None:
        return self._position

    def offer(self, message: RelayMessage) -> Step:
        """A message from the bus: apply it, drop it (already applied), or resync."""
        position = self._position
        if position is None:
            self._buffer.append(message)
            return Step()
        if message.epoch == position.epoch and message.seq <= position.seq:
            return Step()  # already in the snapshot the follower started from
        if message.epoch == position.epoch and message.seq == position.seq + 1:
            self._position = Position(position.epoch, message.seq)
            return Step((message,))
        self.lose()
        self._buffer.append(message)
        return Step(resync=True)

    def lose(self) -> None:
        """The stream is not whole any more (a gap, a bus reconnect): buffer until a snapshot."""
        self._position = None
        self._buffer.clear()

    def restart(self, snapshot: Position) -> Step:
        """The snapshot at ``snapshot`` was loaded: the buffered messages past it, or resync
        again when they do not follow on from it (the snapshot was already overtaken)."""
        buffered = list(self._buffer)
        self._buffer.clear()
        self._position = snapshot
        applied: list[RelayMessage] = []
        for index, message in enumerate(buffered):
            if message.epoch < snapshot.epoch:
                continue  # the old leader's, superseded by the snapshot's epoch
            step = self.offer(message)
            if step.resync:
                self._buffer.extend(buffered[index + 1:])
                return Step(tuple(applied), resync=True)
            applied.extend(step.apply)
        return Step(tuple(applied))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
