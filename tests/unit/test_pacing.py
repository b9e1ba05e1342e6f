"""Pacing per upstream account: bursts go out at once, a bounded queue waits, the rest is refused.

Rates are chosen so the outcome does not depend on how fast the machine is: where nothing may
leak out of the bucket during the test, the rate is 1 per second; where the queue must drain,
50 per second with ``max_wait`` leaving room between the last queued call's wait and the bound.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import RateLimited
from gateway.services.pacing import AccountPacer


async def outcomes(pacer: AccountPacer, account: str, calls: int) -> list[str]:
    async def one() -> str:
        try:
            await pacer.pace(account)
        except RateLimited as exc:
            return exc.code
        return "sent"
    return list(await asyncio.gather(*(one() for _ in range(calls))))


async def test_calls_within_the_burst_go_out_at_once() -> None:
    pacer = AccountPacer(rate=1.0, burst=5, max_wait=0.0)  # no waiting allowed at all
    assert await outcomes(pacer, "desk-alpha", 6) == ["sent"] * 5 + ["account_busy"]


async def test_a_bounded_queue_waits_its_turn_and_the_rest_is_refused_at_once() -> None:
    pacer = AccountPacer(rate=50.0, burst=1, max_wait=0.11)  # room for 5 queued calls
    sent: list[int] = []

    async def call(index: int) -> None:
        await pacer.pace("desk-alpha")
        sent.append(index)

    tasks = [asyncio.create_task(call(index)) for index in range(9)]
    await asyncio.sleep(0)
    refused = [task for task in tasks[6:] if task.done()]
    assert len(refused) == 3  # refused before anything queued went out: no waiting for them
    for task in refused:
        error = task.exception()
        assert isinstance(error, RateLimited)
        assert (error.status, error.code) == (429, "account_busy")
        assert error.retry_after > 0.11
        assert error.headers()["Retry-After"] == "1"
    await asyncio.gather(*tasks[:6])
    assert sent == [0, 1, 2, 3, 4, 5]  # in arrival order


async def test_accounts_are_paced_independently() -> None:
    pacer = AccountPacer(rate=1.0, burst=1, max_wait=0.0)
    assert await outcomes(pacer, "desk-alpha", 2) == ["sent", "account_busy"]
    assert await outcomes(pacer, "desk-beta", 1) == ["sent"]


async def test_a_caller_that_gives_up_frees_its_place_in_the_queue() -> None:
    pacer = AccountPacer(rate=10.0, burst=1, max_wait=0.25)  # room for 2 queued calls
    await pacer.pace("desk-alpha")
    queued = [asyncio.create_task(pacer.pace("desk-alpha")) for _ in range(2)]
    await asyncio.sleep(0)
    assert await outcomes(pacer, "desk-alpha", 1) == ["account_busy"]
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    assert await outcomes(pacer, "desk-alpha", 1) == ["sent"]


async def test_a_rate_of_zero_disables_pacing() -> None:
    pacer = AccountPacer(rate=0.0, burst=0, max_wait=0.0)
    assert await outcomes(pacer, "desk-alpha", 1000) == ["sent"] * 1000


def test_an_enabled_pacer_needs_a_burst_and_a_finite_wait() -> None:
    with pytest.raises(ValueError, match="burst"):
        AccountPacer(rate=10.0, burst=0, max_wait=1.0)
    with pytest.raises(ValueError, match="max_wait"):
        AccountPacer(rate=10.0, burst=1, max_wait=-1.0)
