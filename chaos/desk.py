"""Order calls as the desk's clients make them, and what the trail and the exchange say after.

Clients send every order call with an ``Idempotency-Key`` and, when they get no real answer (no
answer at all, 503, or a 409 saying the first try is in progress or its outcome unknown), send
it again with the same key, replica after replica, until they do (``retry_until_settled``).

A scenario's figures are counted from the gateway's audit trail (``GET /admin/audit``) and the
simulator's counters (``/_sim/stats``), never from what the clients were told (``tally``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from chaos.processes import Answer, Lab, Replica

MARKET = "BCCBTC"
PRICE = "0.1"  # a buy far below the quiet simulator's book: it rests, nothing fills
PLACE_ROUTE = "POST /v1/markets/{market}/orders"
CANCEL_ROUTE = "POST /v1/markets/{market}/orders/{order_id}/_cancel"
# What the desk answers while it cannot give the real answer yet: the client tries again.
NOT_YET = frozenset({(409, "idempotency_in_progress"), (409, "idempotency_outcome_unknown")})
LIVE = frozenset({"accepted", "rejected", "upstream_error"})  # outcomes the exchange answered
SETTLING = LIVE | {"reconciled", "unresolved"}
RETRY_PAUSE = 0.2
STATS_POLL = 0.05  # how often a wait looks at the counters again
PENDING_PAGES = 10  # of 100 orders: far more than a whole run leaves resting
Call = Callable[[Replica], Awaitable[Answer]]


def amount(number: int) -> str:
    """The amount of a scenario's ``number``-th order: each differs, so each answer can be
    checked against what its own call asked for."""
    return str(Decimal("0.01") + number * Decimal("0.0001"))


def asked(answer: Answer, size: str) -> bool:
    """Whether ``answer`` is an order of the amount ``size`` (the exchange renders its own way)."""
    shown = answer.body.get("amount") if isinstance(answer.body, dict) else None
    return isinstance(shown, str) and Decimal(shown) == Decimal(size)


async def place(lab: Lab, replica: Replica, user: str, key: str | None, size: str) -> Answer:
    headers = {"Idempotency-Key": key} if key else {}
    return await lab.gateway(replica, "POST", f"/v1/markets/{MARKET}/orders", user,
                             headers=headers, data={"side": "2", "amount": size, "price": PRICE})


async def cancel(lab: Lab, replica: Replica, user: str, order_id: int, key: str) -> Answer:
    return await lab.gateway(replica, "POST", f"/v1/markets/{MARKET}/orders/{order_id}/_cancel",
                             user, headers={"Idempotency-Key": key})


def placing(lab: Lab, user: str, key: str, size: str) -> Call:
    """The place ``key`` of ``user``, to send (again) on any replica."""
    return lambda replica: place(lab, replica, user, key, size)


def cancelling(lab: Lab, user: str, order_id: int, key: str) -> Call:
    return lambda replica: cancel(lab, replica, user, order_id, key)


def keyed_calls(lab: Lab, user: str, places: Mapping[str, str], cancels: Mapping[str, int]
                ) -> dict[str, Call]:
    """``user``'s places (key -> amount) and cancels (key -> order id), by key."""
    calls = {key: placing(lab, user, key, size) for key, size in places.items()}
    return calls | {key: cancelling(lab, user, order_id, key)
                    for key, order_id in cancels.items()}


def placed_as_asked(answers: Mapping[str, Answer], places: Mapping[str, str],
                    pending: set[int]) -> bool:
    """Every place (key -> amount) answered with an order of its own amount, each another
    one, each resting at the exchange."""
    orders = [answers[key].body.get("id") for key in places
              if key in answers and answers[key].status == 200]
    return (len(orders) == len(places) == len(set(orders)) and set(orders) <= pending
            and all(asked(answers[key], size) for key, size in places.items()))


def cancels_took_effect(answers: Mapping[str, Answer], cancels: Mapping[str, int],
                        pending: set[int]) -> bool:
    """Every cancel (key -> order id) answered with its order, none still resting."""
    return all(key in answers and answers[key].status == 200
               and answers[key].body.get("id") == order_id
               for key, order_id in cancels.items()) and not set(cancels.values()) & pending


async def resting(lab: Lab, replica: Replica, count: int) -> list[int]:
    """``count`` resting orders of trader-a, placed while all is well: what cancels aim at."""
    answers = [await place(lab, replica, "trader-a", None, amount(900 + n)) for n in range(count)]
    if any(answer.status != 200 for answer in answers):
        raise ValueError(f"a resting order was refused: {answers}")
    return [answer.body["id"] for answer in answers]


def settled(answer: Answer) -> bool:
    """Whether ``answer`` is the real one: neither no answer, nor a 503, nor "not yet"."""
    return answer.status not in (0, 503) and (answer.status, answer.code) not in NOT_YET


async def retry_until_settled(calls: Mapping[str, Call], replicas: list[Replica],
                              within: float, pause: float = RETRY_PAUSE
                              ) -> tuple[dict[str, Answer], float | None]:
    """Each call sent again (same key) on the replicas in turn, ``pause`` seconds apart, until
    its answer is settled; the answers, and the monotonic time the last one came (None: not
    all within ``within``)."""
    answers: dict[str, Answer] = {}
    deadline = time.monotonic() + within
    turn = 0
    while time.monotonic() < deadline:
        waiting = [key for key in calls if key not in answers]
        results = await asyncio.gather(*(calls[key](replicas[(turn + n) % len(replicas)])
                                         for n, key in enumerate(waiting)))
        answers |= {key: answer for key, answer in zip(waiting, results, strict=True)
                    if settled(answer)}
        if len(answers) == len(calls):
            return answers, time.monotonic()
        turn += 1
        await asyncio.sleep(pause)
    return answers, None


async def at_exchange(lab: Lab, before: Mapping[str, Any], places: int, cancels: int,
                      within: float = 20.0) -> bool:
    """Whether the exchange has received ``places`` places and ``cancels`` cancels since
    ``before`` (a ``/_sim/stats``), within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = await lab.stats()
        if (route_delta(before, now, PLACE_ROUTE) >= places
                and route_delta(before, now, CANCEL_ROUTE) >= cancels):
            return True
        await asyncio.sleep(STATS_POLL)
    return False


def order_calls(before: Mapping[str, Any], after: Mapping[str, Any]) -> int:
    """Places and cancels the exchange received between two ``/_sim/stats``."""
    return route_delta(before, after, PLACE_ROUTE) + route_delta(before, after, CANCEL_ROUTE)


async def spools_empty(lab: Lab, replicas: list[Replica], within: float = 10.0) -> bool:
    """Whether every replica has written what it spooled (audit records, keys' answers,
    owners), within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        bodies = [await lab.ready(replica) for replica in replicas]
        if all(body["audit_spool"]["pending"] == body["settlement_spool"]["pending"] == 0
               for body in bodies):
            return True
        await asyncio.sleep(STATS_POLL)
    return False


def route_delta(before: Mapping[str, Any], after: Mapping[str, Any], route: str) -> int:
    count: int = after["rest_requests"].get(route, 0) - before["rest_requests"].get(route, 0)
    return count


async def pending_ids(lab: Lab) -> set[int]:
    """The account's orders resting on the market, from the exchange itself."""
    ids: set[int] = set()
    for page_number in range(PENDING_PAGES):
        page = await lab.exchange("GET", f"/v1/markets/{MARKET}/orders/_pending", params={
            "limit": "100", "offset": str(100 * page_number)})
        ids |= {record["id"] for record in page["records"]}
        if len(page["records"]) < 100:
            return ids
    raise ValueError(f"more than {PENDING_PAGES * 100} resting orders")


@dataclass(frozen=True)
class Tally:
    """A scenario's order calls as the trail and the exchange's counters tell them."""

    intents: int
    accepted: int  # the exchange's own answer accepted the call
    unknown: int  # the call went out and no answer from the exchange recorded its outcome
    reconciled: int  # settled later from the exchange's order lists
    unresolved: int  # the reconciler gave up: a human would look
    settled_once: bool  # every intent has exactly one settling outcome, every outcome an intent
    exchange_orders: int  # orders the exchange created during the scenario
    duplicated: int  # of those, orders no call of the trail accounts for
    upstream_calls: int  # places and cancels the exchange received

    def figures(self) -> dict[str, object]:
        return {"accepted": self.accepted, "unknown": self.unknown,
                "reconciled": self.reconciled, "unresolved": self.unresolved,
                "duplicated": self.duplicated, "exchange_orders": self.exchange_orders,
                "upstream_order_calls": self.upstream_calls, "intents": self.intents}

    def checks(self, documented_duplicates: int = 0) -> dict[str, bool]:
        """``documented_duplicates``: the orders the README says a scenario's fault places
        twice (none but where a state loss took the idempotency keys)."""
        duplicates = ("no_duplicates" if documented_duplicates == 0
                      else "duplicated_only_as_documented")
        return {"every_intent_settled_once": self.settled_once,
                "every_unknown_reconciled": self.reconciled == self.unknown,
                "no_unresolved": self.unresolved == 0,
                duplicates: self.duplicated == documented_duplicates,
                "each_intent_sent_once": self.upstream_calls == self.intents}

    def then(self, later: Tally, duplicated: int = 0) -> Tally:
        """This tally and a ``later`` one of another segment of the trail (after a state loss),
        taken together, with ``duplicated`` more orders: ones each segment accounts for, placed
        by both for one client's call."""
        return Tally(
            intents=self.intents + later.intents, accepted=self.accepted + later.accepted,
            unknown=self.unknown + later.unknown, reconciled=self.reconciled + later.reconciled,
            unresolved=self.unresolved + later.unresolved,
            settled_once=self.settled_once and later.settled_once,
            exchange_orders=self.exchange_orders + later.exchange_orders,
            duplicated=self.duplicated + later.duplicated + duplicated,
            upstream_calls=self.upstream_calls + later.upstream_calls)


async def tally(lab: Lab, replica: Replica, before: Mapping[str, Any]) -> Tally:
    """The scenario's trail (its own key prefix holds only its calls) read on ``replica``, and
    the exchange's counters since ``before``."""
    intents = await lab.audit(replica, kind="intent")
    outcomes = await lab.audit(replica, kind="outcome")
    after = await lab.stats()
    by_intent: dict[str, list[dict[str, Any]]] = {intent["id"]: [] for intent in intents}
    orphans = 0
    for outcome in outcomes:
        if outcome["intent_id"] in by_intent:
            by_intent[outcome["intent_id"]].append(outcome)
        else:
            orphans += 1
    kinds = Counter(outcome["outcome"] for outcome in outcomes)
    attributed = {outcome["order_id"] for outcome in outcomes
                  if outcome["action"] == "place" and outcome["order_id"] is not None
                  and (outcome["outcome"] == "accepted" or outcome["reason"] == "placed")}
    exchange_orders = after["orders"]["placed"] - before["orders"]["placed"]
    return Tally(
        intents=len(intents),
        accepted=kinds["accepted"],
        unknown=sum(1 for found in by_intent.values()
                    if not any(outcome["outcome"] in LIVE for outcome in found)),
        reconciled=kinds["reconciled"],
        unresolved=kinds["unresolved"],
        settled_once=orphans == 0 and all(
            sum(outcome["outcome"] in SETTLING for outcome in found) == 1
            for found in by_intent.values()),
        exchange_orders=exchange_orders,
        duplicated=exchange_orders - len(attributed),
        upstream_calls=order_calls(before, after),
    )


def result(scenario: str, attempted: int, found: Tally | None, seconds: float | None,
           checks: Mapping[str, bool], *, documented_duplicates: int = 0,
           **figures: object) -> dict[str, object]:
    """A scenario's JSON line: its figures, each check, and ``ok`` when every check holds;
    ``documented_duplicates`` (see ``Tally.checks``) is among the figures when there are any."""
    every = {**checks, **(found.checks(documented_duplicates) if found else {})}
    if documented_duplicates:
        figures = {"documented_duplicates": documented_duplicates, **figures}
    counted = found.figures() if found else {
        "accepted": 0, "unknown": 0, "reconciled": 0, "unresolved": 0, "duplicated": 0}
    return {"scenario": scenario, "orders_attempted": attempted, **counted,
            "seconds_to_recover": None if seconds is None else round(seconds, 1), **figures,
            "checks": every, "ok": all(every.values())}
