"""The circuit breaker as a script of events against a fake clock: no I/O, no sleeping."""

from __future__ import annotations

import pytest

from gateway.errors import CircuitOpen, UpstreamUnavailable
from gateway.upstream.breaker import CircuitBreaker, CircuitState
from tests.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failures_to_open=3, cooldown=10.0, clock=clock)


def state(breaker: CircuitBreaker) -> CircuitState:
    """Read afresh each time (an ``assert breaker.state is …`` would narrow the property)."""
    return breaker.state


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure()


def test_it_starts_closed_and_admits_calls(breaker: CircuitBreaker) -> None:
    breaker.before_call()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.retry_after() == 0


def test_it_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.before_call()
    breaker.record_success()
    fail(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


def test_while_open_calls_fail_fast_with_the_time_to_the_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.now += 2.5
    assert breaker.retry_after() == pytest.approx(7.5)
    with pytest.raises(CircuitOpen) as raised:
        breaker.before_call()
    error = raised.value
    assert isinstance(error, UpstreamUnavailable)
    assert (error.status, error.code) == (503, "upstream_circuit_open")
    assert error.headers() == {"Retry-After": "8"}
    assert "8 s" in error.message


def test_retry_after_is_at_least_one_second(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 9.9
    with pytest.raises(CircuitOpen) as raised:
        breaker.before_call()
    assert raised.value.headers() == {"Retry-After": "1"}


def test_exactly_one_probe_after_the_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 10
    breaker.before_call()
    assert state(breaker) is CircuitState.HALF_OPEN
    for _ in range(3):
        with pytest.raises(CircuitOpen) as raised:
            breaker.before_call()
        assert raised.value.headers() == {"Retry-After": "1"}
        assert "probe" in raised.value.message


def test_a_successful_probe_closes_the_circuit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 10
    breaker.before_call()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    breaker.before_call()
    fail(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED


def test_a_failed_probe_reopens_for_another_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.now += 10
    breaker.before_call()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.retry_after() == pytest.approx(10)
    clock.now += 9
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 1
    breaker.before_call()
    assert state(breaker) is CircuitState.HALF_OPEN


def test_late_reports_while_open_change_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 4
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.retry_after() == pytest.approx(6)


def test_an_abandoned_probe_lets_the_next_caller_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.now += 10
    breaker.before_call()
    breaker.record_abandoned()
    assert state(breaker) is CircuitState.OPEN
    breaker.before_call()
    assert state(breaker) is CircuitState.HALF_OPEN


def test_abandoned_calls_while_closed_change_nothing(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.record_abandoned()
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


def test_the_states_have_wire_names() -> None:
    assert [state.value for state in CircuitState] == ["closed", "open", "half_open"]


def test_at_least_one_failure_is_needed_to_open(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="failures_to_open"):
        CircuitBreaker(failures_to_open=0, cooldown=1.0, clock=clock)
