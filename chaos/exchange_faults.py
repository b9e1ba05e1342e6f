"""The exchange answers 500, then times out: order calls whose outcome is unknown, reconciled.

Two replicas. First every call fails with a 500 (an ``error_rate`` fault): the exchange did not
act, but a 500 does not say so, and the client gets the exchange's own 500. Then the exchange
is slower than the gateway's ``upstream.total_timeout`` (a latency fault above it): the gateway
answers 504 and the exchange acts on the places and cancels after it gave up. The clients send
each call again with the same key, on either replica, until they get the real answer: the
timed-out places' orders (200) and cancels (200), and a definite 409 ``order_not_placed`` for
the places the 500 refused, once the reconcile window has passed without such an order.

``seconds_to_recover``: from the faults' end until every client holds its real answer (the
"not placed" verdicts wait out ``orders.reconcile.window`` + ``skew`` after their intents).
"""

from __future__ import annotations

import asyncio
import time

from chaos import desk
from chaos.processes import Lab, Settings

NAME = "exchange_faults"
TIMEOUT_S = 1.0  # the gateway's upstream.total_timeout here
EXCHANGE_DELAY_MS = 1800  # above it: the exchange acts after the gateway gave up
RECOVERY = 30.0  # bounds the wait for every real answer; it is measured, not assumed
SETTINGS: Settings = {
    "upstream": {"total_timeout": TIMEOUT_S},
    "orders": {"idempotency": {"lease": 2, "wait": 0.5},
               "reconcile": {"interval": 0.3, "window": 2.5, "skew": 0.5}},
}


async def run(lab: Lab, short: bool) -> dict[str, object]:
    # Timeouts count towards each replica's circuit breaker (5 in a row open it): the scenario
    # stays below, so the exchange's own answers are what the clients see.
    failed, slow, cancels = (2, 2, 1) if short else (4, 4, 2)
    async with lab.replicas(NAME, 2, SETTINGS) as replicas:
        before = await lab.stats()
        targets = await desk.resting(lab, replicas[0], cancels)

        await lab.faults(error_rate=1.0, error_status=500)
        refused = {f"refused-{n}": desk.amount(n) for n in range(failed)}
        errors = await asyncio.gather(*(desk.place(lab, replicas[n % 2], "trader-a", key, size)
                                        for n, (key, size) in enumerate(refused.items())))
        await lab.faults(clear=True)

        sent_before = await lab.stats()
        await lab.faults(latency_ms=EXCHANGE_DELAY_MS)
        late = {f"late-{n}": desk.amount(failed + n) for n in range(slow)}
        keys = {f"cancel-{order_id}": order_id for order_id in targets}
        timeouts = await asyncio.gather(
            *(desk.place(lab, replicas[n % 2], "trader-a", key, size)
              for n, (key, size) in enumerate(late.items())),
            *(desk.cancel(lab, replicas[n % 2], "trader-a", order_id, key)
              for n, (key, order_id) in enumerate(keys.items())))
        reached = await desk.at_exchange(lab, sent_before, slow, cancels)
        await lab.faults(latency_ms=0)
        cleared_at = time.monotonic()

        calls = desk.keyed_calls(lab, "trader-a", refused | late, keys)
        answers, answered_at = await desk.retry_until_settled(calls, replicas[::-1], RECOVERY)
        pending = await desk.pending_ids(lab)
        found = await desk.tally(lab, replicas[0], before)
        checks = {
            "exchange_500_passed_through": all(answer.status == 500 for answer in errors),
            "timeouts_answered_504": all(answer.status == 504 for answer in timeouts),
            "timed_out_calls_reached_exchange": reached,
            "recovered": answered_at is not None,
            "refused_places_definitely_not_placed": all(
                key in answers and (answers[key].status, answers[key].code) == (
                    409, "order_not_placed") for key in refused),
            "timed_out_places_got_their_order": desk.placed_as_asked(answers, late, pending),
            "timed_out_cancels_took_effect": desk.cancels_took_effect(answers, keys, pending),
        }
        return desk.result(NAME, cancels + len(calls), found,
                           None if answered_at is None else answered_at - cleared_at, checks,
                           upstream_total_timeout_s=TIMEOUT_S,
                           exchange_delay_s=EXCHANGE_DELAY_MS / 1000)
