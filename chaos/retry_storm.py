"""A retry storm: one order sent many times at once, with one ``Idempotency-Key``, to every replica.

The exchange is a little slow (a latency fault), so the storm arrives while the first request is
at the exchange: the others wait for its result and get it as a replay. The exchange sees
exactly one order. Replays are answered before any rate limit is spent, so with limits that
leave room for three places per account (two per user) the storm costs its user one: afterwards
another user of the account places, the storm's user places once more, and only the next place
is refused (429), which shows the budget was real.

``seconds_to_recover``: from the storm's start until every one of its clients holds the order.
"""

from __future__ import annotations

import time
from collections import Counter

from bench.common import UNLIMITED
from chaos import desk
from chaos.processes import Lab, Settings

NAME = "retry_storm"
EXCHANGE_DELAY_MS = 500  # the storm lands while the first request is at the exchange
WITHIN = 30.0  # bounds the wait for every answer; it is measured, not assumed
USER_PLACES, ACCOUNT_PLACES = 2, 3  # per minute: the budget the storm must not eat
SETTINGS: Settings = {
    "orders": {
        "limits": {"place": {"count": USER_PLACES, "window": 60}, "cancel": UNLIMITED,
                   "read": UNLIMITED, "market_data": UNLIMITED},
        "account_limits": {"place": {"count": ACCOUNT_PLACES, "window": 60},
                           "cancel": UNLIMITED},
        "idempotency": {"wait": 10},  # a duplicate waits for the first one's answer
    },
}


async def run(lab: Lab, short: bool) -> dict[str, object]:
    requests, count = (60, 2) if short else (300, 3)
    async with lab.replicas(NAME, count, SETTINGS) as replicas:
        before = await lab.stats()
        await lab.faults(latency_ms=EXCHANGE_DELAY_MS)
        storm = {f"request-{n}": desk.placing(lab, "trader-a", "storm", desk.amount(0))
                 for n in range(requests)}
        started_at = time.monotonic()
        answers, answered_at = await desk.retry_until_settled(storm, replicas, WITHIN)
        await lab.faults(latency_ms=0)
        after_storm = await lab.stats()

        others = await desk.place(lab, replicas[0], "trader-b", "b-1", desk.amount(1))
        again = await desk.place(lab, replicas[-1], "trader-a", "a-2", desk.amount(2))
        over = await desk.place(lab, replicas[0], "trader-b", "b-2", desk.amount(3))
        found = await desk.tally(lab, replicas[0], before)
        refusals = Counter(event["reason"] for event in await lab.audit(replicas[0],
                                                                         kind="refusal"))
        orders = {answer.body.get("id") for answer in answers.values() if answer.status == 200}
        checks = {
            "every_request_answered": answered_at is not None and all(
                answer.status == 200 for answer in answers.values()),
            "one_order_for_all": len(orders) == 1,
            "all_but_one_replayed": sum(not a.replayed for a in answers.values()) == 1,
            "exchange_got_one_place": desk.route_delta(before, after_storm, desk.PLACE_ROUTE) == 1
            and after_storm["orders"]["placed"] - before["orders"]["placed"] == 1,
            "another_user_still_places": others.status == 200,
            "storm_user_still_places": again.status == 200,
            "budget_is_real": (over.status, over.code) == (429, "rate_limited"),
            "only_that_one_refused": refusals == Counter({"rate_limited": 1}),
        }
        return desk.result(NAME, 4, found,
                      None if answered_at is None else answered_at - started_at, checks,
                      storm_requests=requests, replicas=count,
                      storm_replayed=sum(answer.replayed for answer in answers.values()))
