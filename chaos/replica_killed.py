"""A replica killed with ``kill -9`` while its places and keyed cancels are at the exchange.

The exchange holds every call for a while (a latency fault), so the replica dies after the
exchange took them and before any answer came back: its clients get no answer at all. They
send each call again with the same ``Idempotency-Key`` to the other replicas until they get the
real answer: 409 while the dead replica's lease holds, then "outcome unknown" until a surviving
replica's reconciler has swept the trail for the dead one's intents and settled them from the
exchange's own order lists; then the order (200) or a definite 409. Nothing is sent twice: the
exchange counts every place and cancel it received.

``seconds_to_recover``: from the kill until every client holds its real answer (target: under
30 s).
"""

from __future__ import annotations

import asyncio
import time

from chaos import desk
from chaos.processes import Lab, Settings

NAME = "replica_killed"
EXCHANGE_DELAY_MS = 1500  # the replica dies while the exchange holds every call
RECOVERY = 30.0  # the target, and the bound of the wait: past it the scenario fails
# Short leases and timeouts, as a desk that wants a dead replica's calls settled quickly sets
# them; the reconciler sweeps for intents without outcome max(lease, timeout) + skew old.
SETTINGS: Settings = {
    "upstream": {"total_timeout": 3},
    "orders": {"idempotency": {"lease": 2, "wait": 1},
               "reconcile": {"interval": 0.5, "window": 4, "skew": 1}},
}


async def run(lab: Lab, short: bool) -> dict[str, object]:
    places, cancels, count = (4, 2, 2) if short else (8, 4, 3)
    async with lab.replicas(NAME, count, SETTINGS) as replicas:
        victim, survivors = replicas[0], replicas[1:]
        before = await lab.stats()
        targets = await desk.resting(lab, victim, cancels)
        sent_before = await lab.stats()
        await lab.faults(latency_ms=EXCHANGE_DELAY_MS)
        sizes = {f"place-{n}": desk.amount(n) for n in range(places)}
        keys = {f"cancel-{order_id}": order_id for order_id in targets}
        calls = desk.keyed_calls(lab, "trader-a", sizes, keys)
        tasks = [asyncio.ensure_future(call(victim)) for call in calls.values()]
        reached = await desk.at_exchange(lab, sent_before, places, cancels)
        await asyncio.to_thread(victim.kill)
        killed_at = time.monotonic()
        lost = await asyncio.gather(*tasks)
        await lab.faults(latency_ms=0)

        answers, answered_at = await desk.retry_until_settled(calls, survivors, RECOVERY)
        pending = await desk.pending_ids(lab)
        mine = answers["place-0"].body.get("id", 0) if "place-0" in answers else 0
        by_owner = await desk.cancel(lab, survivors[-1], "trader-a", mine, "after")
        found = await desk.tally(lab, survivors[0], before)
        checks = {
            "calls_at_exchange_when_killed": reached,
            "no_answer_from_the_dead": all(answer.status == 0 for answer in lost),
            "recovered_within_30_s": answered_at is not None,
            "places_answered_with_their_own_resting_order": desk.placed_as_asked(
                answers, sizes, pending),
            "cancels_took_effect": desk.cancels_took_effect(answers, keys, pending),
            "owner_cancels_a_reconciled_order": by_owner.status == 200,
        }
        return desk.result(NAME, cancels + len(calls) + 1, found,
                           None if answered_at is None else answered_at - killed_at, checks,
                           replicas=count)
