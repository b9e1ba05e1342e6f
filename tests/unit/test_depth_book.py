"""Depth views and Expie's diffs: merging, the merge-walk diff, what a client rebuilds from it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.depth_book import (
    BookSide,
    DepthView,
    Level,
    apply_side,
    diff_side,
    diff_views,
    merge_side,
    render_side,
)

ASKS, BIDS = BookSide.ASKS, BookSide.BIDS


def levels(*pairs: tuple[str, str]) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(amount)) for price, amount in pairs)


def test_merging_rounds_asks_up_to_the_interval() -> None:
    book = levels(("0.1001", "1"), ("0.1009", "2"), ("0.101", "4"), ("0.1011", "3"))
    assert merge_side(book, ASKS, Decimal("0.001"), 10) == levels(("0.101", "7"), ("0.102", "3"))


def test_merging_rounds_bids_down_to_the_interval() -> None:
    book = levels(("0.1019", "1"), ("0.1011", "2"), ("0.101", "4"), ("0.1009", "3"))
    assert merge_side(book, BIDS, Decimal("0.001"), 10) == levels(("0.101", "7"), ("0.1", "3"))


def test_the_limit_counts_merged_levels() -> None:
    book = levels(("0.1001", "1"), ("0.1002", "1"), ("0.1011", "1"), ("0.1021", "1"))
    assert merge_side(book, ASKS, Decimal("0.001"), 2) == levels(("0.101", "2"), ("0.102", "1"))


def test_a_zero_interval_keeps_the_best_levels_unmerged() -> None:
    book = levels(("3", "1"), ("2", "1"), ("1", "1"))
    assert merge_side(book, BIDS, Decimal(0), 2) == levels(("3", "1"), ("2", "1"))
    assert merge_side(book, BIDS, Decimal(0), 0) == ()


def test_a_removed_level_is_announced_with_a_zero_amount() -> None:
    old = levels(("1", "1"), ("2", "1"), ("3", "1"))
    new = levels(("1", "1"), ("3", "2"))
    assert diff_side(old, new, ASKS, 10) == list(levels(("2", "0"), ("3", "2")))


def test_a_new_level_is_announced_in_book_order() -> None:
    old = levels(("3", "1"), ("1", "1"))
    new = levels(("3", "1"), ("2", "5"), ("1", "1"))
    assert diff_side(old, new, BIDS, 10) == list(levels(("2", "5")))


def test_levels_pushed_out_of_the_top_n_are_not_announced() -> None:
    old = levels(("2", "1"), ("3", "1"))
    new = levels(("1", "1"), ("2", "1"))
    changes = diff_side(old, new, ASKS, 2)
    assert changes == list(levels(("1", "1")))
    assert apply_side(old, changes, ASKS, 2) == new


def test_trailing_levels_are_zeroed_when_the_new_side_is_short() -> None:
    old = levels(("1", "1"), ("2", "1"), ("3", "1"))
    new = levels(("1", "1"))
    assert diff_side(old, new, ASKS, 3) == list(levels(("2", "0"), ("3", "0")))


def test_the_wire_diff_omits_an_unchanged_side() -> None:
    old = DepthView(asks=levels(("0.135", "1")), bids=levels(("0.134", "2")))
    new = DepthView(asks=levels(("0.135", "1")), bids=levels(("0.1335", "1.5")))
    assert diff_views(old, new, 10) == {"bids": [["0.134", "0"], ["0.1335", "1.5"]]}
    assert diff_views(new, new, 10) == {}


def test_views_render_in_the_engine_style() -> None:
    view = DepthView(asks=levels(("0.13450000", "1.5000")), bids=())
    assert view.to_wire() == {"asks": [["0.1345", "1.5"]], "bids": []}


prices = st.integers(min_value=1, max_value=300).map(lambda n: Decimal(n).scaleb(-4))
amounts = st.integers(min_value=1, max_value=5000).map(lambda n: Decimal(n).scaleb(-3))
books = st.dictionaries(prices, amounts, max_size=25)
intervals = st.sampled_from([Decimal(0), Decimal("0.0005"), Decimal("0.001"), Decimal("0.01")])


def view_of(book: dict[Decimal, Decimal], side: BookSide, interval: Decimal,
            limit: int) -> tuple[Level, ...]:
    return merge_side(side.sort(list(book.items())), side, interval, limit)


@given(old=books, new=books, side=st.sampled_from(BookSide), interval=intervals,
       limit=st.integers(min_value=0, max_value=12))
def test_applying_the_diff_to_the_old_view_gives_the_new_view(
    old: dict[Decimal, Decimal], new: dict[Decimal, Decimal], side: BookSide,
    interval: Decimal, limit: int,
) -> None:
    old_view, new_view = view_of(old, side, interval, limit), view_of(new, side, interval, limit)
    changes = diff_side(old_view, new_view, side, limit)
    assert apply_side(old_view, changes, side, limit) == new_view
    assert (changes == []) == (old_view == new_view)


@given(old=books, new=books, interval=intervals, limit=st.integers(min_value=1, max_value=12))
def test_the_rendered_diff_rebuilds_the_rendered_view(
    old: dict[Decimal, Decimal], new: dict[Decimal, Decimal], interval: Decimal, limit: int,
) -> None:
    def view(book: dict[Decimal, Decimal]) -> DepthView:
        return DepthView(view_of(book, ASKS, interval, limit), view_of(book, BIDS, interval, limit))

    old_view, new_view = view(old), view(new)
    diff = diff_views(old_view, new_view, limit)
    for side in BookSide:
        changes = [(Decimal(p), Decimal(a)) for p, a in diff.get(side.value, [])]
        rebuilt = apply_side(old_view.side(side), changes, side, limit)
        assert render_side(rebuilt) == new_view.to_wire()[side.value]
