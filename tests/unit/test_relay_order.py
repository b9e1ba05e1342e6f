"""A follower's place in its leader's stream: what it applies, what it drops, when it resyncs.

What a user would notice: a book built from the relay that skipped an update (wrong), applied one
twice (wrong), or never recovered from a gap (frozen).
"""

from __future__ import annotations

import pytest

from gateway.core.relay_order import (
    Position,
    RelayCursor,
    RelayFormatError,
    RelayMessage,
    Step,
    decode_message,
)


def message(epoch: int, seq: int, data: int = 0) -> RelayMessage:
    return RelayMessage(epoch, seq, "u", data)


def synced_at(epoch: int, seq: int) -> RelayCursor:
    cursor = RelayCursor()
    assert cursor.restart(Position(epoch, seq)).apply == ()
    return cursor


def test_messages_round_trip_through_their_encoding() -> None:
    sent = RelayMessage(7, 42, "u", [True, {"asks": [["0.1", "2"]]}])
    assert decode_message(sent.encode()) == sent
    assert decode_message(sent.encode().encode()) == sent


@pytest.mark.parametrize("text", ["", "{", "[1, 2, 3]", '[1, -2, "u", null]', '[1, 2, 3, null]',
                                  '[true, 2, "u", null]', '{"epoch": 1}'])
def test_an_unreadable_message_is_refused(text: str) -> None:
    with pytest.raises(RelayFormatError):
        decode_message(text)


def test_the_next_message_of_the_epoch_is_applied_and_an_old_one_dropped() -> None:
    cursor = synced_at(3, 10)
    assert cursor.offer(message(3, 11)).apply == (message(3, 11),)
    assert cursor.offer(message(3, 11)).apply == ()
    assert cursor.offer(message(3, 9)).apply == ()
    assert cursor.position == Position(3, 11)


@pytest.mark.parametrize("arrived", [message(3, 12), message(4, 1), message(2, 99)])
def test_a_gap_or_another_epoch_stops_the_stream_until_a_snapshot(arrived: RelayMessage) -> None:
    cursor = synced_at(3, 10)
    step = cursor.offer(arrived)
    assert step.resync
    assert step.apply == ()
    assert not cursor.synced
    assert cursor.offer(message(3, 13)) == Step()  # buffered until a snapshot, not applied


def test_a_snapshot_resumes_with_what_was_buffered_after_it() -> None:
    cursor = RelayCursor()
    for seq in (4, 5, 6, 7):
        assert cursor.offer(message(2, seq)).apply == ()
    step = cursor.restart(Position(2, 5))
    assert step.apply == (message(2, 6), message(2, 7))
    assert not step.resync
    assert cursor.offer(message(2, 8)).apply == (message(2, 8),)


def test_a_snapshot_already_overtaken_by_a_gap_asks_for_another() -> None:
    cursor = RelayCursor()
    for seq in (6, 8, 9):
        cursor.offer(message(2, seq))
    step = cursor.restart(Position(2, 5))
    assert step.apply == (message(2, 6),)
    assert step.resync
    # The messages after the gap wait for the next snapshot.
    assert cursor.restart(Position(2, 8)).apply == (message(2, 9),)


def test_a_new_leaders_snapshot_drops_the_old_leaders_buffered_messages() -> None:
    cursor = RelayCursor()
    cursor.offer(message(1, 50))
    cursor.offer(message(2, 1))
    step = cursor.restart(Position(2, 0))
    assert step.apply == (message(2, 1),)
    assert not step.resync


def test_a_lost_stream_forgets_what_it_buffered() -> None:
    cursor = synced_at(1, 1)
    cursor.lose()
    cursor.offer(message(1, 2))
    cursor.lose()
    assert cursor.restart(Position(1, 5)).apply == ()


def test_the_buffer_is_bounded_and_its_overflow_shows_as_a_gap() -> None:
    cursor = RelayCursor(limit=3)
    for seq in range(1, 7):
        cursor.offer(message(1, seq))
    step = cursor.restart(Position(1, 2))  # 3 is gone: only 4, 5, 6 were kept
    assert step.resync
    assert step.apply == ()
