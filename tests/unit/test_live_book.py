"""The gateway's live book and per-view streams: clients rebuild what Expie itself would send."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.decimals import ENGINE_CONTEXT
from gateway.core.depth_book import (
    BookSide,
    DepthView,
    Level,
    apply_side,
    diff_views,
    merge_side,
    render_side,
)
from gateway.core.live_book import BookError, LocalBook, ViewStream, query_view

ASKS, BIDS = BookSide.ASKS, BookSide.BIDS
FullBook = dict[BookSide, dict[Decimal, Decimal]]


def levels(*pairs: tuple[str, str]) -> tuple[Level, ...]:
    return tuple((Decimal(price), Decimal(amount)) for price, amount in pairs)


def wire(*pairs: tuple[str, str]) -> list[list[str]]:
    return [[price, amount] for price, amount in pairs]


def live_book(upstream_limit: int, asks: list[list[str]], bids: list[list[str]]) -> LocalBook:
    book = LocalBook(upstream_limit)
    book.apply(True, {"asks": asks, "bids": bids})
    return book


def exchange_side(
    full: FullBook, side: BookSide, limit: int, interval: Decimal
) -> tuple[Level, ...]:
    """What the exchange's ``depth.query`` shows of ``full`` (the engine's context and order)."""
    with localcontext(ENGINE_CONTEXT):
        return merge_side(side.sort(list(full[side].items())), side, interval, limit)


def exchange_view(full: FullBook, limit: int, interval: Decimal) -> DepthView:
    return DepthView(
        exchange_side(full, ASKS, limit, interval), exchange_side(full, BIDS, limit, interval)
    )


class Client:
    """An Expie client: a clean frame replaces its book, a diff is applied then truncated."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.book: dict[str, list[list[str]]] | None = None
        self.frames = 0

    def receive(self, frame: bytes) -> None:
        message = json.loads(frame)
        assert (message["method"], message["id"]) == ("depth.update", None)
        clean, body, _market = message["params"]
        self.frames += 1
        if clean:
            self.book = body
            return
        assert self.book is not None, "a diff before any clean snapshot"
        for side in BookSide:
            held = tuple((Decimal(p), Decimal(a)) for p, a in self.book[side.value])
            changes = [(Decimal(p), Decimal(a)) for p, a in body.get(side.value, [])]
            rebuilt = apply_side(held, changes, side, self.limit)
            self.book[side.value] = render_side(rebuilt)


# --- LocalBook: following the upstream ---------------------------------------------------------

PREC = 2
ask_prices = st.integers(min_value=101, max_value=160).map(lambda n: Decimal(n).scaleb(-PREC))
bid_prices = st.integers(min_value=40, max_value=99).map(lambda n: Decimal(n).scaleb(-PREC))
amounts = st.integers(min_value=1, max_value=9000).map(lambda n: Decimal(n).scaleb(-3))
# Zero means "the level is gone" in a book change.
changed_amounts = st.one_of(st.just(Decimal(0)), amounts)
full_books = st.fixed_dictionaries({
    ASKS: st.dictionaries(ask_prices, amounts, max_size=20),
    BIDS: st.dictionaries(bid_prices, amounts, max_size=20),
})
book_changes = st.lists(
    st.one_of(
        st.tuples(st.just(ASKS), ask_prices, changed_amounts),
        st.tuples(st.just(BIDS), bid_prices, changed_amounts),
    ),
    min_size=1, max_size=6,
)
# Intervals as the engine holds them: truncated to the market's money precision.
intervals = st.sampled_from(
    [Decimal(text).quantize(Decimal(1).scaleb(-PREC))
     for text in ("0", "0.01", "0.02", "0.05", "0.1", "0.25", "1", "5")]
)
views = st.tuples(st.integers(min_value=0, max_value=25), intervals)


def change(full: FullBook, side: BookSide, price: Decimal, amount: Decimal) -> None:
    if amount == 0:
        full[side].pop(price, None)
    else:
        full[side][price] = amount


@settings(max_examples=300, deadline=None)
@given(
    full=full_books,
    steps=st.lists(
        st.tuples(book_changes, st.booleans(), st.lists(views, max_size=4)), max_size=12
    ),
    upstream_limit=st.sampled_from([1, 3, 5, 10]),
)
def test_the_local_book_follows_the_exchange_and_only_derives_exact_views(
    full: FullBook,
    steps: list[tuple[list[tuple[BookSide, Decimal, Decimal]], bool, list[tuple[int, Decimal]]]],
    upstream_limit: int,
) -> None:
    book = LocalBook(upstream_limit)
    upstream = exchange_view(full, upstream_limit, Decimal(0))
    book.apply(True, upstream.to_wire())
    for changes, resend_clean, queries in steps:
        for side, price, amount in changes:
            change(full, side, price, amount)
        previous, upstream = upstream, exchange_view(full, upstream_limit, Decimal(0))
        diff = diff_views(previous, upstream, upstream_limit)
        # The 60 s rule sends a clean snapshot instead of a diff, only when something changed.
        if resend_clean and diff:
            book.apply(True, upstream.to_wire())
        elif diff:
            book.apply(False, diff)
        assert (book.levels(ASKS), book.levels(BIDS)) == (upstream.asks, upstream.bids)
        for limit, interval in queries:
            assert_exact(book, full, limit, interval)


def assert_exact(book: LocalBook, full: FullBook, limit: int, interval: Decimal) -> None:
    derived = book.view(limit, interval)
    if derived is not None:
        expected = exchange_view(full, limit, interval)
        assert derived == expected
        assert derived.to_wire() == expected.to_wire()
    sides_full = any(len(book.levels(side)) == book.upstream_limit for side in BookSide)
    if not sides_full or (interval == 0 and limit <= book.upstream_limit):
        assert derived is not None


def test_a_diff_is_truncated_to_the_upstream_limit() -> None:
    book = live_book(2, wire(("1", "1"), ("2", "1")), [])
    book.apply(False, {"asks": wire(("0.5", "3"))})
    assert book.levels(ASKS) == levels(("0.5", "3"), ("1", "1"))
    book.apply(False, {"asks": wire(("0.5", "0"), ("2", "4"))})
    assert book.levels(ASKS) == levels(("1", "1"), ("2", "4"))


def test_a_clean_snapshot_replaces_the_book() -> None:
    book = live_book(5, wire(("1", "1"), ("2", "1")), wire(("0.9", "1")))
    book.apply(True, {"asks": wire(("3", "2")), "bids": []})
    assert (book.levels(ASKS), book.levels(BIDS)) == (levels(("3", "2")), ())


def test_a_book_is_live_from_its_first_snapshot_until_reset() -> None:
    book = LocalBook(5)
    assert not book.live
    assert book.view(5, Decimal(0)) is None
    book.apply(True, {"asks": [], "bids": wire(("1", "1"))})
    assert book.live
    book.reset()
    assert not book.live
    assert book.view(5, Decimal(0)) is None


@pytest.mark.parametrize(
    "body",
    [
        {"asks": "1"},
        {"asks": [["1"]]},
        {"asks": [["1", "2", "3"]]},
        {"asks": [[1, "2"]]},
        {"asks": [["abc", "1"]]},
        {"asks": [["NaN", "1"]]},
        {"asks": [["1", "-1"]]},
        {"asks": [["-0.1", "1"]]},
        {"bids": [["1", "1"]], "asks": [["2", "1"], "bad"]},
    ],
)
def test_a_malformed_diff_is_refused_and_leaves_the_book_alone(body: dict[str, object]) -> None:
    book = live_book(5, wire(("2", "1")), wire(("1", "1")))
    with pytest.raises(BookError):
        book.apply(False, body)
    assert (book.levels(ASKS), book.levels(BIDS)) == (levels(("2", "1")), levels(("1", "1")))


def test_a_clean_snapshot_needs_both_sides() -> None:
    book = live_book(5, wire(("2", "1")), [])
    with pytest.raises(BookError):
        book.apply(True, {"asks": wire(("3", "1"))})
    assert book.levels(ASKS) == levels(("2", "1"))


def test_a_diff_before_any_snapshot_is_refused() -> None:
    book = LocalBook(5)
    with pytest.raises(BookError):
        book.apply(False, {"asks": wire(("2", "1"))})
    assert not book.live


# --- LocalBook: which views are exact ----------------------------------------------------------


def test_a_short_side_gives_every_view_exactly() -> None:
    book = live_book(5, wire(("1.01", "1"), ("1.02", "2"), ("1.33", "4")), wire(("0.97", "1")))
    view = book.view(100, Decimal("0.05"))
    assert view == DepthView(levels(("1.05", "3"), ("1.35", "4")), levels(("0.95", "1")))
    assert book.view(100, Decimal(0)) is not None


def test_a_full_side_cannot_show_more_unmerged_levels_than_it_holds() -> None:
    book = live_book(3, wire(("1.01", "1"), ("1.02", "1"), ("1.03", "1")), [])
    assert book.view(3, Decimal(0)) is not None
    assert book.view(4, Decimal(0)) is None


def test_a_coarse_interval_needing_the_last_bucket_of_a_full_side_is_not_derived() -> None:
    # Deeper asks up to 1.05 would fall into the 1.05 bucket: its amount is unknown.
    book = live_book(3, wire(("1.01", "1"), ("1.02", "1"), ("1.03", "1")), [])
    assert book.view(1, Decimal("0.05")) is None
    assert book.view(1, Decimal("0.02")) == DepthView(levels(("1.02", "2")), ())
    assert book.view(2, Decimal("0.02")) is None


def test_a_full_bid_side_keeps_its_last_bucket_unknown_too() -> None:
    # Deeper bids down to 0.94 would fall into the 0.94 bucket.
    book = live_book(3, [], wire(("0.99", "1"), ("0.98", "1"), ("0.95", "1")))
    assert book.view(1, Decimal("0.02")) == DepthView((), levels(("0.98", "2")))
    assert book.view(2, Decimal("0.02")) is None


def test_a_last_level_on_its_bucket_edge_completes_that_bucket() -> None:
    # Any ask deeper than 1.05 rounds up to 1.10 or beyond, so the 1.05 bucket is whole;
    # likewise any bid below 0.95 rounds down to 0.90 or below.
    book = live_book(
        3,
        wire(("1.01", "1"), ("1.02", "1"), ("1.05", "1")),
        wire(("0.99", "1"), ("0.98", "1"), ("0.95", "1")),
    )
    assert book.view(1, Decimal("0.05")) == DepthView(levels(("1.05", "3")), levels(("0.95", "3")))
    assert book.view(2, Decimal("0.05")) is None


def test_the_query_answer_is_the_wire_view() -> None:
    book = live_book(5, wire(("1.01", "1.50"),), wire(("0.97", "2")))
    expected = {"asks": wire(("1.01", "1.5")), "bids": wire(("0.97", "2"))}
    assert query_view(book, 5, Decimal(0)) == expected
    assert query_view(LocalBook(5), 5, Decimal(0)) is None


# --- ViewStream: frames per view ---------------------------------------------------------------


Pairs = tuple[tuple[str, str], ...]


def view(asks: Pairs = (), bids: Pairs = ()) -> DepthView:
    return DepthView(levels(*asks), levels(*bids))


V1 = view((("1", "1"), ("2", "1")), (("0.5", "1"),))
V2 = view((("1", "3"), ("2", "1")), (("0.5", "1"),))
V3 = view((("1", "3"),), (("0.5", "2"),))
V4 = view((("1.5", "1"),), (("0.5", "2"),))
V5 = view((("1.5", "2"),), (("0.5", "2"),))


def decoded(frame: bytes | None) -> list[object]:
    assert frame is not None
    params: list[object] = json.loads(frame)["params"]
    return params


@settings(max_examples=200, deadline=None)
@given(
    books=st.lists(full_books, min_size=1, max_size=10),
    limit=st.integers(min_value=1, max_value=12),
    interval=intervals,
    gaps=st.lists(st.floats(min_value=0, max_value=40), min_size=10, max_size=10),
)
def test_a_client_rebuilds_every_view_from_the_frames(
    books: list[FullBook], limit: int, interval: Decimal, gaps: list[float]
) -> None:
    stream = ViewStream("BTCUSDT", limit, str(interval))
    client, now, previous = Client(limit), 0.0, None
    for full, gap in zip(books, gaps, strict=False):
        now += gap
        current = exchange_view(full, limit, interval)
        frame = stream.update(current, now)
        if frame is None:
            assert previous == current
        else:
            client.receive(frame)
        assert client.book == current.to_wire()
        previous = current


def test_the_first_update_is_a_clean_snapshot() -> None:
    stream = ViewStream("BTCUSDT", 10, "0")
    assert stream.snapshot_frame() is None
    assert decoded(stream.update(V1, 100.0)) == [True, V1.to_wire(), "BTCUSDT"]


def test_an_unchanged_view_sends_nothing_even_after_a_minute() -> None:
    stream = ViewStream("BTCUSDT", 10, "0")
    stream.update(V1, 0.0)
    assert stream.update(V1, 1.0) is None
    assert stream.update(V1, 500.0) is None


def test_changes_go_out_as_diffs_until_a_minute_passes_since_the_last_clean() -> None:
    stream = ViewStream("BTCUSDT", 10, "0")
    stream.update(V1, 0.0)
    assert decoded(stream.update(V2, 30.0)) == [False, {"asks": wire(("1", "3"))}, "BTCUSDT"]
    assert decoded(stream.update(V3, 59.9))[0] is False
    assert decoded(stream.update(V4, 60.0)) == [True, V4.to_wire(), "BTCUSDT"]
    assert decoded(stream.update(V5, 119.0))[0] is False
    assert decoded(stream.update(V1, 120.0))[0] is True


def test_the_clean_period_is_configurable() -> None:
    stream = ViewStream("BTCUSDT", 10, "0", full_every=5.0)
    stream.update(V1, 0.0)
    assert decoded(stream.update(V2, 4.0))[0] is False
    assert decoded(stream.update(V3, 5.0))[0] is True


def test_after_a_reset_the_next_update_is_clean_even_if_unchanged() -> None:
    stream = ViewStream("BTCUSDT", 10, "0")
    stream.update(V1, 0.0)
    stream.reset()
    assert stream.snapshot_frame() is None
    assert stream.current is None
    assert decoded(stream.update(V1, 1.0)) == [True, V1.to_wire(), "BTCUSDT"]


def test_a_late_joiner_gets_a_clean_snapshot_of_the_current_view_then_follows_diffs() -> None:
    stream = ViewStream("BTCUSDT", 2, "0")
    stream.update(V1, 0.0)
    stream.update(V2, 1.0)
    late = Client(2)
    late.receive(stream.snapshot_frame() or b"")
    assert decoded(stream.snapshot_frame()) == [True, V2.to_wire(), "BTCUSDT"]
    frame = stream.update(V3, 2.0)
    assert frame is not None
    late.receive(frame)
    assert late.book == V3.to_wire()


def test_a_snapshot_is_encoded_once_per_view() -> None:
    stream = ViewStream("BTCUSDT", 10, "0")
    first = stream.update(V1, 0.0)
    assert stream.snapshot_frame() is first
    assert stream.snapshot_frame() is stream.snapshot_frame()
    stream.update(V2, 1.0)
    assert decoded(stream.snapshot_frame()) == [True, V2.to_wire(), "BTCUSDT"]


def test_a_stream_keeps_the_clients_interval_text() -> None:
    stream = ViewStream("BTCUSDT", 10, "0.10")
    assert (stream.interval_text, stream.interval) == ("0.10", Decimal("0.1"))
    with pytest.raises(ValueError, match="interval"):
        ViewStream("BTCUSDT", 10, "abc")
