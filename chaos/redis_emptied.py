"""Redis restarted without its data: killed (SIGKILL), its append-only files deleted, started
empty on the same port. A state loss, which the desk must stop for rather than paper over.

Two replicas take places (some with an ``Idempotency-Key``, some resting for a cancel later),
``audit export --mark-exported`` writes the checkpoint, a few more places follow (records no
export holds), and both replicas have looked at Redis since the last one. Then Redis comes back
empty. One client's place arrives on the first replica at once (most likely before its state
check has looked: then the audit append itself refuses it); the other replica is left to its
state check. While the state is lost every replica refuses places and cancels with 503
``state_lost``, unsent, shows ``expie_gateway_state_lost 1``, and ``audit verify`` fails naming
the break against the checkpoint and the head the replicas knew. ``expie-gateway audit
acknowledge-loss`` starts the new segment after that head; the refused calls, retried with
their keys on their own replica as clients do, are placed once each, orders flow on both
replicas, and ``verify`` passes listing the break.

What the loss took, as the README and docs/operations.md say: the idempotency keys and order
owners written before it. A retry of a pre-loss key is a new request and places a second order
for one client's call (counted in ``duplicated``, which the check holds to exactly that); the
owner's cancel of a pre-loss order is 404 and the desk's operator (``orders:desk``) cancels it,
and the duplicate.

``seconds_to_recover``: from Redis answering again, empty, until every replica refuses order
calls (the issue's bound: within a second). ``seconds_to_resume``: from the acknowledgement
until every refused call, retried, is placed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.common import gateway_cli_run
from chaos import desk
from chaos.processes import Answer, Lab, Replica, Settings

NAME = "redis_emptied"
STATE_CHECK = 0.5  # redis.state_check_interval, the default, set here to say what waits rely on
SETTINGS: Settings = {"redis": {"state_check_interval": STATE_CHECK}}
REFUSED_WITHIN = 1.0  # the bound: every replica refuses order calls within a second
WITHIN = 20.0  # bounds each wait (for the loss to be seen, for orders to flow); measured
POLL = 0.05
REASON = "chaos: redis restarted without its append-only files"
LOST = (503, "state_lost")
AMOUNTS = 300  # this scenario's order amounts start here: none is another scenario's
FIRST, FIRST_AMOUNT = "first-after-restart", desk.amount(AMOUNTS + 90)
GAUGE = "expie_gateway_state_lost"
Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Before:
    """What the desk did before the loss, and what the trail in Redis said of it then."""

    targets: list[int]  # trader-a's resting orders, for cancels later
    sizes: dict[str, str]  # keyed places: key -> amount
    placed: dict[str, Answer]  # their answers by key
    settled: bool  # every answer 200 and every spool written
    exported: bool  # audit export --mark-exported exited 0
    checkpoint: dict[str, Any]  # the checkpoint file it wrote
    head: dict[str, Any]  # the newest record of the trail, which the replicas know
    tally: desk.Tally
    keys: set[tuple[str, str]]  # (user, key) of the keyed places the trail holds placed
    stats: Any  # /_sim/stats just before the loss


async def trade_and_export(lab: Lab, replicas: list[Replica], resting: int, early: int,
                           late: int) -> Before:
    before = await lab.stats()
    targets = await desk.resting(lab, replicas[0], resting)
    asked = sizes("place", early, 0)
    placed = await place_all(lab, replicas, "trader-a", asked)
    settled = await desk.spools_empty(lab, replicas)
    exported = await asyncio.to_thread(
        gateway_cli_run, "audit", "export", "--since", "1h", "--output",
        lab.directory / f"{NAME}-export.jsonl", "--mark-exported", "--config", replicas[0].config)
    checkpoint = json.loads(lab.checkpoint_file(NAME).read_text(encoding="utf-8"))
    asked_late = sizes("late", late, early)
    placed |= await place_all(lab, replicas, "trader-b", asked_late)
    settled = await desk.spools_empty(lab, replicas) and settled and all(
        answer.status == 200 for answer in placed.values())
    await asyncio.sleep(STATE_CHECK + 0.1)  # both replicas have seen the newest head
    return Before(targets, asked | asked_late, placed, settled, exported.returncode == 0,
                  checkpoint, (await lab.records(replicas[0]))[-1],
                  await desk.tally(lab, replicas[1], before), await placed_keys(lab, replicas[1]),
                  await lab.stats())


async def empty_redis(lab: Lab, replicas: list[Replica]
                      ) -> tuple[float, float, list[float | None], Answer]:
    """Redis killed, wiped and started; when it was killed and answered again, when each
    replica showed the state lost, and the answer to a place sent at once."""
    await asyncio.to_thread(lab.redis.kill)
    killed_at = time.monotonic()
    lab.redis.wipe()
    await asyncio.to_thread(lab.redis.start)
    restarted_at = time.monotonic()
    refusing, first = await asyncio.gather(
        asyncio.gather(*(first_time(state_is(lab, replica, "lost"), WITHIN)
                         for replica in replicas)),
        desk.place(lab, replicas[0], "trader-a", FIRST, FIRST_AMOUNT))
    return killed_at, restarted_at, refusing, first


async def run(lab: Lab, short: bool) -> dict[str, object]:
    resting, early, late, during = (1, 2, 2, 2) if short else (2, 4, 4, 4)
    async with lab.replicas(NAME, 2, SETTINGS) as replicas:
        was = await trade_and_export(lab, replicas, resting, early, late)
        checkpoint, head = was.checkpoint, was.head
        killed_at, restarted_at, refusing, first = await empty_redis(lab, replicas)
        refused_at = latest(refusing)

        during_sizes = sizes("lost", during, early + late) | {FIRST: FIRST_AMOUNT}
        cancel_keys = {f"cancel-{order_id}": order_id for order_id in was.targets}
        calls = desk.keyed_calls(lab, "trader-a", during_sizes, cancel_keys)
        # Each client keeps to its replica (FIRST's is the first), so both must take orders again.
        homes = {key: replicas[n % 2] for n, key in enumerate(calls)} | {FIRST: replicas[0]}
        refusals = await asyncio.gather(*(calls[key](homes[key]) for key in calls
                                          if key != FIRST))
        gauges_lost = [await lab.gauge(replica, GAUGE) for replica in replicas]
        broken_status, broken = await lab.verify(replicas[0])
        unsent = desk.order_calls(was.stats, await lab.stats()) == 0

        acknowledged = await asyncio.to_thread(
            gateway_cli_run, "audit", "acknowledge-loss", "--reason", REASON,
            "--config", replicas[0].config)
        acknowledged_at = time.monotonic()
        segment = segment_record(acknowledged.stdout)
        answers, resumed_at = await retry_at_home(calls, homes, replicas)
        original = was.placed["place-0"]
        # place-0 again, as it was sent (trader-a's, on the first replica) but to the other one
        again = await desk.place(lab, replicas[1], "trader-a", "place-0", was.sizes["place-0"])
        flowing = [await desk.place(lab, replica, "trader-b", f"after-{n}",
                                    desk.amount(AMOUNTS + 80 + n))
                   for n, replica in enumerate(replicas)]
        gauges_after = [await lab.gauge(replica, GAUGE) for replica in replicas]
        written = await desk.spools_empty(lab, replicas)
        pending = await desk.pending_ids(lab)
        duplicate = again.body.get("id") if again.status == 200 else None
        by_owner, by_desk = await clear(lab, replicas, [
            answers[key].body["id"] for key in during_sizes
            if key in answers and answers[key].status == 200],
            [*was.targets, *([duplicate] if isinstance(duplicate, int) else [])])
        segment_first = (await lab.records(replicas[1]))[0]
        whole_status, whole = await lab.verify(replicas[1])
        later = await desk.tally(lab, replicas[0], was.stats)
        twice = len(was.keys & await placed_keys(lab, replicas[0]))
        lost_after = [checkpoint["seq"] + 1, head["seq"]]

        checks = {
            "placed_before_the_loss": was.settled,
            "checkpoint_written": was.exported and 0 < checkpoint["seq"] < head["seq"],
            "first_order_after_restart_refused": first.status == 503,
            "every_replica_refused": refused_at is not None,
            "refused_state_lost_everywhere": all((a.status, a.code) == LOST for a in refusals),
            "nothing_sent_while_lost": unsent,
            "state_lost_gauge_on_every_replica": gauges_lost == [1.0] * len(replicas),
            "verify_names_the_break": broken_status == 1 and names_the_break(
                broken, checkpoint, head),
            "acknowledged_after_the_last_known_head": acknowledged.returncode == 0
            and follows(segment, head, checkpoint),
            "new_segment_starts_with_the_acknowledgement": segment is not None
            and (segment_first["seq"], segment_first["hash"]) == (segment["seq"],
                                                                  segment["hash"]),
            "refused_calls_placed_when_retried_on_every_replica": resumed_at is not None
            and desk.placed_as_asked(answers, during_sizes, pending)
            and not any(answers[key].replayed for key in during_sizes if key in answers),
            "orders_flow_on_every_replica": all(answer.status == 200 for answer in flowing),
            "gauge_clear_on_every_replica": gauges_after == [0.0] * len(replicas),
            "spools_written_after_acknowledging": written,
            "lost_owner_cancel_is_404_as_documented": all(
                key in answers and (answers[key].status, answers[key].code) == (
                    404, "order_not_found") for key in cancel_keys),
            "lost_key_is_a_new_request_as_documented": again.status == 200
            and not again.replayed and duplicate != original.body.get("id")
            and {duplicate, original.body.get("id")} <= pending,
            "owner_cancels_orders_placed_after": all(a.status == 200 for a in by_owner),
            "desk_cancels_what_lost_owners_left": all(a.status == 200 for a in by_desk),
            "verify_passes_listing_the_break": whole_status == 0 and lists_the_break(
                whole, checkpoint, head, segment, lost_after),
        }
        if not short:
            # A timing target, so only the measuring run holds to it: the short version runs
            # inside the test suite, where a busy machine must not fail a correct gateway.
            checks["every_replica_refuses_within_a_second"] = (
                refused_at is not None and refused_at - restarted_at <= REFUSED_WITHIN)
        return desk.result(
            NAME, resting + len(was.placed) + len(calls) + 1 + len(flowing) + len(by_owner)
            + len(by_desk), was.tally.then(later, twice),
            None if refused_at is None else refused_at - restarted_at, checks,
            documented_duplicates=1,
            seconds_to_resume=None if resumed_at is None else round(
                resumed_at - acknowledged_at, 1),
            seconds_to_refuse_by_replica=[None if t is None else round(t - restarted_at, 2)
                                          for t in refusing],
            redis_down_s=round(restarted_at - killed_at, 1),
            first_after_restart=f"{first.status} {first.code}",
            checkpoint_seq=checkpoint["seq"], last_seq=head["seq"],
            lost_after_checkpoint=lost_after,
            lost_key_retry=f"{again.status}, {'replayed' if again.replayed else 'a new order'}")


async def clear(lab: Lab, replicas: list[Replica], mine: list[int], ownerless: list[int]
                ) -> tuple[list[Answer], list[Answer]]:
    """trader-a cancels its orders placed after the loss (``mine``); the desk's operator the
    orders whose owner the loss took and the duplicate (``ownerless``)."""
    by_owner = [await desk.cancel(lab, replicas[n % 2], "trader-a", order_id,
                                  f"after-{order_id}") for n, order_id in enumerate(mine)]
    by_desk = [await desk.cancel(lab, replicas[n % 2], "desk-ops", order_id,
                                 f"clear-{order_id}") for n, order_id in enumerate(ownerless)]
    return by_owner, by_desk


async def retry_at_home(calls: Mapping[str, desk.Call], homes: Mapping[str, Replica],
                        replicas: list[Replica]) -> tuple[dict[str, Answer], float | None]:
    """Each call sent again (same key) on its own replica until settled, all at once; the
    answers, and when the last came (None: not all within ``WITHIN``)."""
    done = await asyncio.gather(*(desk.retry_until_settled(
        {key: call for key, call in calls.items() if homes[key] is replica}, [replica],
        WITHIN, POLL) for replica in replicas))
    return ({key: answer for found, _ in done for key, answer in found.items()},
            latest([at for _, at in done]))


def latest(times: list[float | None]) -> float | None:
    """The last of ``times``; None when any is None (that one never came)."""
    known = [at for at in times if at is not None]
    return max(known) if len(known) == len(times) else None


def sizes(prefix: str, count: int, start: int) -> dict[str, str]:
    """``count`` keyed places by key (``prefix-n``) -> amount, from the ``start``-th on."""
    return {f"{prefix}-{n}": desk.amount(AMOUNTS + start + n) for n in range(count)}


async def place_all(lab: Lab, replicas: list[Replica], user: str,
                    places: Mapping[str, str]) -> dict[str, Answer]:
    """``user``'s keyed places, one after another, on the replicas in turn."""
    return {key: await desk.place(lab, replicas[n % len(replicas)], user, key, size)
            for n, (key, size) in enumerate(places.items())}


async def placed_keys(lab: Lab, replica: Replica) -> set[tuple[str, str]]:
    """(user, key) of every keyed place the trail in Redis holds with an order placed."""
    intents = {event["id"]: (event["user"], event["idempotency_key"])
               for event in await lab.audit(replica, kind="intent")
               if event["action"] == "place" and event["idempotency_key"]}
    return {intents[outcome["intent_id"]] for outcome in await lab.audit(replica, kind="outcome")
            if outcome["intent_id"] in intents and outcome["order_id"] is not None
            and (outcome["outcome"] == "accepted" or outcome["reason"] == "placed")}


def state_is(lab: Lab, replica: Replica, wanted: str) -> Probe:
    """Whether ``replica``'s ``/readyz`` shows the shared state ``wanted``."""
    async def probe() -> bool:
        body = await lab.ready(replica)
        return bool(body["dependencies"]["shared_state"] == wanted)
    return probe


async def first_time(probe: Probe, within: float) -> float | None:
    """The monotonic time ``probe`` first holds, looking every ``POLL`` s; None if not within
    ``within``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe():
            return time.monotonic()
        await asyncio.sleep(POLL)
    return None


def segment_record(stdout: str) -> dict[str, Any] | None:
    """The first record of the new segment, as ``acknowledge-loss`` prints it."""
    try:
        record = json.loads(stdout)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def names_the_break(verdict: Mapping[str, Any], checkpoint: Mapping[str, Any],
                    head: Mapping[str, Any]) -> bool:
    """``verify``'s verdict while the loss is not acknowledged: the trail ends before the
    checkpoint, the loss is reported, after the head the replicas knew."""
    problem, loss = str(verdict.get("problem")), verdict.get("state_loss") or {}
    return (problem.startswith("the audit trail ends at seq 0, before the last exported "
                               f"checkpoint (seq {checkpoint['seq']}, ")
            and "a state loss is reported and not acknowledged" in problem
            and (loss.get("last_seq"), loss.get("last_hash"), loss.get("epoch")) == (
                head["seq"], head["hash"], checkpoint["epoch"]))


def follows(segment: Mapping[str, Any] | None, head: Mapping[str, Any],
            checkpoint: Mapping[str, Any]) -> bool:
    """The acknowledgement's record goes on after ``head``, naming it and the lost epoch."""
    if segment is None:
        return False
    event = segment["event"]
    params = event["params"]
    return ((segment["seq"], segment["prev"]) == (head["seq"] + 1, head["hash"])
            and (event["kind"], event["action"]) == ("admin", "state_loss.acknowledge")
            and (params["last_seq"], params["last_hash"], params["lost_epoch"],
                 params["in_place"], params["reason"]) == (
                str(head["seq"]), head["hash"], checkpoint["epoch"], "false", REASON))


def lists_the_break(verdict: Mapping[str, Any], checkpoint: Mapping[str, Any],
                    head: Mapping[str, Any], segment: Mapping[str, Any] | None,
                    lost_after: list[int]) -> bool:
    """``verify``'s verdict after the acknowledgement: one acknowledged break, after ``head``,
    with what no export holds."""
    if segment is None:
        return False
    params = segment["event"]["params"]
    return (verdict.get("ok") is True and verdict.get("state_loss") is None
            and (verdict.get("checkpoint") or {}).get("seq") == checkpoint["seq"]
            and verdict.get("segments") == [{
                "seq": segment["seq"], "follows_seq": head["seq"], "follows_hash": head["hash"],
                "in_place": False, "lost_epoch": checkpoint["epoch"], "epoch": params["epoch"],
                "reason": REASON, "acknowledged": True, "lost_after_checkpoint": lost_after}])
