"""Redis killed (SIGKILL) between orders' intents and their outcomes, then restarted with its AOF.

Two replicas; the exchange holds every order call for a while (a latency fault), so Redis dies
after each call's intent was stored and before its outcome, idempotent answer and owner were.
Places and keyed cancels are in flight; more places arrive while Redis is down, and the desk
refuses them with 503, unsent (nothing trades unaudited), so their clients retry with the same
key. Redis comes back on the same port and directory with its AOF. Afterwards every order call
has exactly one outcome in the trail, every key replays its answer on the other replica, the
placed orders' owner can cancel them and another user cannot, and the hash chain verifies.

``seconds_to_recover``: from Redis's restart until the spools are written and every client
holds its real answer.
"""

from __future__ import annotations

import asyncio
import time

from chaos import desk
from chaos.processes import Lab

NAME = "redis_killed"
EXCHANGE_DELAY_MS = 1500  # Redis is killed while the exchange holds every call
RECOVERY = 30.0  # bounds the wait for recovery; it is measured, not assumed


async def run(lab: Lab, short: bool) -> dict[str, object]:
    places, cancels, refused, down_for = (4, 2, 2, 1.0) if short else (8, 4, 4, 3.0)
    user = "trader-a"
    async with lab.replicas(NAME, 2) as replicas:
        before = await lab.stats()
        targets = await desk.resting(lab, replicas[0], cancels)
        sent_before = await lab.stats()
        await lab.faults(latency_ms=EXCHANGE_DELAY_MS)
        sizes = {f"place-{n}": desk.amount(n) for n in range(places)}
        cancel_keys = {f"cancel-{order_id}": order_id for order_id in targets}
        calls = desk.keyed_calls(lab, user, sizes, cancel_keys)
        tasks = [asyncio.ensure_future(call(replicas[n % 2]))
                 for n, call in enumerate(calls.values())]
        reached = await desk.at_exchange(lab, sent_before, places, cancels)
        await asyncio.to_thread(lab.redis.kill)
        killed_at = time.monotonic()
        try:
            first = dict(zip(calls, await asyncio.gather(*tasks), strict=True))
            spooled = sum([(await lab.ready(replica))["settlement_spool"]["pending"]
                           for replica in replicas])
            await lab.faults(latency_ms=0)
            down = await lab.stats()
            during = {f"during-{n}": desk.amount(places + n) for n in range(refused)}
            refusals = await asyncio.gather(*(
                desk.place(lab, replicas[n % 2], user, key, size)
                for n, (key, size) in enumerate(during.items())))
            unsent = desk.order_calls(down, await lab.stats()) == 0
            await asyncio.sleep(max(0.0, killed_at + down_for - time.monotonic()))
        finally:
            await asyncio.to_thread(lab.redis.start)
        restarted_at = time.monotonic()

        sizes |= during
        calls |= desk.keyed_calls(lab, user, during, {})
        # Replays go to the other replica first: the answer must come from the shared store.
        answers, answered_at = await desk.retry_until_settled(calls, replicas[::-1], RECOVERY)
        recovered_at = (time.monotonic() if answered_at is not None
                        and await desk.spools_empty(lab, replicas) else None)

        pending = await desk.pending_ids(lab)
        placed = [answers[key].body["id"] for key in sizes
                  if key in answers and answers[key].status == 200]
        by_owner = [await desk.cancel(lab, replicas[n % 2], user, order_id, f"after-{order_id}")
                    for n, order_id in enumerate(placed)]
        stranger = await desk.cancel(lab, replicas[1], "trader-b", placed[0] if placed else 0,
                                     "stranger")
        found = await desk.tally(lab, replicas[1], before)
        checks = {
            "calls_at_exchange_when_redis_died": reached,
            "in_flight_answered": all(answer.status == 200 for answer in first.values()),
            "outcomes_waited_for_redis": spooled > 0,
            "refused_while_down_and_unsent": unsent and all(
                answer.status == 503 for answer in refusals),
            "recovered": recovered_at is not None,
            "keys_replay_the_first_answer": len(answers) == len(calls) and all(
                answers[key].replayed and answers[key].body == first[key].body for key in first),
            "places_answered_with_their_own_resting_order": desk.placed_as_asked(
                answers, sizes, pending),
            "cancels_took_effect": desk.cancels_took_effect(answers, cancel_keys, pending),
            "owner_cancels": all(answer.status == 200 for answer in by_owner),
            "another_user_cannot_cancel": (stranger.status, stranger.code) == (
                404, "order_not_found"),
            "audit_chain_verifies": await lab.chain_verified(replicas[0]),
        }
        return desk.result(
            NAME, cancels + len(calls) + len(by_owner) + 1, found,
            None if recovered_at is None else recovered_at - restarted_at, checks,
            redis_down_s=round(restarted_at - killed_at, 1), settlements_spooled=spooled,
            refused_while_down=sorted({str(answer.code) for answer in refusals}))
