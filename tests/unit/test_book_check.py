"""When a live book counts as confirmed, when it is resynced, and when it is no longer served.

A fake clock drives ``BookCheck``: what a user notices is the REST ``Age`` of depth served from
the live book, whether it is served from the live book at all, and whether the book is resynced.
"""

from __future__ import annotations

import pytest

from gateway.core.book_check import BookCheck
from tests.clock import FakeClock

CONFIRM_AFTER = 12.0
MAX_AGE = 15.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def check(clock: FakeClock) -> BookCheck:
    return BookCheck(confirm_after=CONFIRM_AFTER, max_age=MAX_AGE, now=clock())


def test_a_matching_query_confirms_the_book_and_its_age_starts_again(
    clock: FakeClock, check: BookCheck,
) -> None:
    clock.advance(7.9)
    assert check.age(clock()) == 7
    check.confirmed(clock())
    assert check.age(clock()) == 0
    clock.advance(2.5)
    assert check.age(clock()) == 2


def test_one_mismatch_does_nothing(clock: FakeClock, check: BookCheck) -> None:
    assert check.mismatched(clock()) is False
    clock.advance(CONFIRM_AFTER * 3)  # no second look: still nothing to resync on
    check.confirmed(clock())
    assert check.mismatched(clock()) is False


def test_two_mismatches_far_enough_apart_resync_the_book(
    clock: FakeClock, check: BookCheck,
) -> None:
    assert check.mismatched(clock()) is False
    clock.advance(5)
    assert check.mismatched(clock()) is False  # within the exchange's query cache: not proof
    clock.advance(CONFIRM_AFTER - 5)
    assert check.mismatched(clock()) is True
    # A resync starts over: the next mismatch is a first one again.
    assert check.mismatched(clock()) is False


def test_two_mismatches_too_close_together_do_not_resync(
    clock: FakeClock, check: BookCheck,
) -> None:
    assert check.mismatched(clock()) is False
    for _ in range(11):
        clock.advance(1)
        assert check.mismatched(clock()) is False


def test_a_match_or_a_push_between_two_mismatches_means_neither_counts(
    clock: FakeClock, check: BookCheck,
) -> None:
    assert check.mismatched(clock()) is False
    clock.advance(6)
    check.confirmed(clock())  # a cached answer expired and the fresh one matched, or a push
    clock.advance(CONFIRM_AFTER)
    assert check.mismatched(clock()) is False
    clock.advance(CONFIRM_AFTER)
    assert check.mismatched(clock()) is True


def test_a_book_unconfirmed_beyond_the_maximum_age_is_not_served(
    clock: FakeClock, check: BookCheck,
) -> None:
    clock.advance(MAX_AGE)
    assert check.servable(clock())
    assert check.age(clock()) == 15
    clock.advance(0.5)
    assert not check.servable(clock())
    check.confirmed(clock())
    assert check.servable(clock())


def test_mismatches_do_not_confirm_the_book(clock: FakeClock, check: BookCheck) -> None:
    for _ in range(3):
        clock.advance(MAX_AGE / 3)
        check.mismatched(clock())
    clock.advance(0.1)
    assert not check.servable(clock())


@pytest.mark.parametrize(("confirm_after", "max_age"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_the_rule_needs_positive_bounds(confirm_after: float, max_age: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        BookCheck(confirm_after=confirm_after, max_age=max_age, now=0.0)
