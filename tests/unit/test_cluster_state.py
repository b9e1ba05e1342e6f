"""When one replica calls the shared state lost, and when it trades again (``ClusterState``)."""

from __future__ import annotations

import pytest

from gateway.core.audit_chain import START, ChainPoint
from gateway.core.cluster_state import Change, ClusterState, EpochView, LossReport
from gateway.errors import StateLost, StoreUnavailable

E1, E2, E3 = "e1" * 16, "e2" * 16, "e3" * 16
H5, H7, H9 = ("5" * 40, "7" * 40, "9" * 40)
SEVEN = ChainPoint(7, H7)


def look(state: ClusterState, view: EpochView) -> Change:
    """``view`` as the state watch hands it over: asked for just now."""
    return state.observe(view, state.stamp())


def joined(epoch: str = E1, head: ChainPoint = SEVEN) -> ClusterState:
    state = ClusterState()
    assert look(state, EpochView(epoch, False, head)) is Change.JOINED
    return state


def test_a_new_replica_joins_the_epoch_it_finds_and_trades() -> None:
    state = ClusterState()
    assert state.status == "unchecked"
    assert look(state, EpochView(E1, False, START)) is Change.JOINED
    state.check()
    assert (state.status, state.epoch, state.append_guard()) == ("ok", E1, (E1, 0))


def test_a_replica_that_never_heard_from_redis_refuses_appends_but_is_not_lost() -> None:
    state = ClusterState()
    state.check()
    with pytest.raises(StoreUnavailable, match="waits for the cluster epoch") as caught:
        state.append_guard()
    assert caught.value.code == "audit_unavailable"


@pytest.mark.parametrize(("view", "reason"), [
    (EpochView(None, False, START), f"the cluster epoch {E1} is gone from Redis"),
    (EpochView(E2, False, ChainPoint(9, H9)),
     f"the cluster epoch in Redis changed from {E1} to {E2} without an acknowledgement"),
    (EpochView(E1, False, ChainPoint(5, H5)),
     "the audit chain head in Redis is seq 5, not the seq 7 this replica saw"),
    (EpochView(E1, False, ChainPoint(7, H9)),
     "the audit chain head in Redis is seq 7, not the seq 7 this replica saw"),
], ids=["emptied", "replaced", "stale-replica", "same-seq-other-chain"])
def test_redis_without_what_the_replica_saw_is_a_loss(view: EpochView, reason: str) -> None:
    state = joined()
    assert look(state, view) is Change.LOST
    assert state.status == "lost"
    with pytest.raises(StateLost) as caught:
        state.check()
    assert (caught.value.status, caught.value.code) == (503, "state_lost")
    assert caught.value.message.startswith(f"Redis lost the gateway's shared state ({reason}); ")
    assert state.report(view) == LossReport(E1, ChainPoint(7, H7), reason)


def test_a_newer_head_is_remembered_and_an_append_may_not_follow_an_older_one() -> None:
    state = joined()
    look(state, EpochView(E1, False, ChainPoint(9, H9)))
    assert state.append_guard() == (E1, 9)
    state.wrote(ChainPoint(12, H5))
    assert state.head == ChainPoint(12, H5)


def test_a_loss_another_replica_reported_stops_this_one_and_a_new_one() -> None:
    report = LossReport(E1, ChainPoint(9, H9), "the cluster epoch e1 is gone from Redis")
    for state in (joined(), ClusterState()):
        assert look(state, EpochView(None, False, START, report)) is Change.LOST
        assert state.loss == report
        assert state.report(EpochView(None, False, START, report)) is None  # nothing newer


def test_a_replica_that_knows_a_newer_head_raises_the_report() -> None:
    state = joined(head=ChainPoint(12, H5))
    report = LossReport(E1, ChainPoint(9, H9), "gone")
    look(state, EpochView(None, False, START, report))
    assert state.report(EpochView(None, False, START, report)) == LossReport(
        E1, ChainPoint(12, H5), "gone")


def test_only_a_new_acknowledged_epoch_past_the_known_head_ends_a_loss() -> None:
    state = joined()
    look(state, EpochView(None, False, START))
    assert look(state, EpochView(E2, False, ChainPoint(8, H9))) is Change.NONE  # not acked
    assert look(state, EpochView(E1, False, ChainPoint(7, H7))) is Change.NONE  # came back
    assert look(state, EpochView(E2, True, ChainPoint(7, H7))) is Change.NONE  # behind
    assert state.status == "lost"
    assert look(state, EpochView(E2, True, ChainPoint(8, H9))) is Change.JOINED
    state.check()
    assert (state.epoch, state.head) == (E2, ChainPoint(8, H9))


def test_an_acknowledgement_elsewhere_is_joined_by_a_replica_that_saw_no_loss() -> None:
    state = joined()
    assert look(state, EpochView(E2, True, ChainPoint(8, H9))) is Change.JOINED
    assert state.epoch == E2


def test_an_old_acknowledged_epoch_restored_from_a_copy_is_a_loss() -> None:
    state = joined()
    look(state, EpochView(E2, True, ChainPoint(8, H9)))
    state.wrote(ChainPoint(20, H5))
    assert look(state, EpochView(E3, True, ChainPoint(10, H7))) is Change.LOST
    state.join(E3, ChainPoint(21, H7))
    assert look(state, EpochView(E2, True, ChainPoint(30, H9))) is Change.LOST  # known before


def test_an_append_refused_for_a_loss_stops_the_replica_at_once() -> None:
    state = joined()
    assert state.lose("a replica reported a state loss in Redis")
    assert not state.lose("again")
    assert state.loss == LossReport(E1, ChainPoint(7, H7),
                                    "a replica reported a state loss in Redis")
    with pytest.raises(StateLost):
        state.append_guard()


def test_a_view_asked_for_before_this_replica_wrote_newer_records_is_no_loss() -> None:
    state = joined()
    asked = state.stamp()
    state.wrote(ChainPoint(8, H9))  # its reply came while the view was on its way
    assert state.observe(EpochView(E1, False, SEVEN), asked) is Change.NONE
    state.check()
    assert state.head == ChainPoint(8, H9)


def test_a_view_asked_for_before_an_acknowledgement_here_is_ignored() -> None:
    state = joined()
    look(state, EpochView(None, False, START))
    asked = state.stamp()
    state.join(E2, ChainPoint(8, H9))  # the acknowledgement this replica served
    report = LossReport(E1, SEVEN, "gone")
    assert state.observe(EpochView(None, False, START, report), asked) is Change.NONE
    assert state.status == "ok"
