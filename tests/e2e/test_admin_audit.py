"""GET /admin/audit: the trail filtered and paged, for desk administrators only."""

from __future__ import annotations

import time

from tests.gateway_harness import RunningGateway

ORDERS = "/v1/markets/BCCBTC/orders"
AUDIT = "/admin/audit"


async def place(gw: RunningGateway, user: str, price: str) -> None:
    status, body, _ = await gw.call("POST", ORDERS, gw.token(user),
                                    data={"side": "1", "amount": "1", "price": price})
    assert status == 200, body


async def audit(gw: RunningGateway, query: str) -> dict[str, object]:
    status, body, _ = await gw.call("GET", f"{AUDIT}?{query}", gw.token("desk-admin"))
    assert status == 200, body
    page: dict[str, object] = body
    return page


def records(page: dict[str, object]) -> list[dict[str, object]]:
    listed = page["records"]
    assert isinstance(listed, list)
    return listed


def events(page: dict[str, object]) -> list[dict[str, object]]:
    return [record["event"] for record in records(page)]


async def test_records_are_filtered_and_paged_in_chain_order(gw: RunningGateway) -> None:
    started = time.time()
    await place(gw, "demo-trader", "0.2")
    await place(gw, "desk-admin", "0.21")
    await place(gw, "demo-trader", "0.22")

    mine = events(await audit(gw, "user=demo-trader&kind=outcome"))
    assert [(e["user"], e["params"]["price"]) for e in mine] == [
        ("demo-trader", "0.2"), ("demo-trader", "0.22")]

    first = await audit(gw, "action=place&limit=4")
    assert len(events(first)) == 4
    rest = await audit(gw, f"action=place&limit=4&after={first['next_after']}")
    assert len(events(rest)) == 2
    assert rest["next_after"] is None
    seqs = [record["seq"] for page in (first, rest) for record in records(page)]
    assert seqs == sorted(seqs)
    assert len(events(await audit(gw, f"since={started}&until={time.time() + 1}"))) == 6
    assert events(await audit(gw, f"until={started}")) == []


async def test_a_bad_filter_is_named_and_only_admins_read_the_trail(gw: RunningGateway) -> None:
    admin = gw.token("desk-admin")
    for query, name in (("since=nan", "since"), ("limit=0", "limit"), ("colour=red", "colour")):
        status, body, _ = await gw.call("GET", f"{AUDIT}?{query}", admin)
        assert (status, body["error"]["code"]) == (400, "bad_query")
        assert name in body["error"]["message"]
    status, body, _ = await gw.call("GET", AUDIT, gw.token("demo-trader"))
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
