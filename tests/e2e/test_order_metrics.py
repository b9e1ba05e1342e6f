"""/metrics counts order calls by outcome and refusals by reason, and shows the audit spool."""

from __future__ import annotations

from tests.e2e.test_upstream_resilience import metric
from tests.gateway_harness import RunningGateway

ORDERS = "/v1/markets/BCCBTC/orders"


async def test_order_calls_and_refusals_are_counted(gw: RunningGateway) -> None:
    token = gw.token()
    for price in ("0.2", "0.21"):
        status, _, _ = await gw.call("POST", ORDERS, token,
                                     data={"side": "1", "amount": "1", "price": price})
        assert status == 200
    status, _, _ = await gw.call("POST", ORDERS, token, data={"side": "3", "amount": "1"})
    assert status == 400
    assert await metric(
        gw, 'expie_gateway_orders_calls_total{action="place",outcome="accepted"}') == 2
    assert await metric(
        gw, 'expie_gateway_orders_refusals_total{action="place",reason="invalid_order"}') == 1
    assert await metric(gw, "expie_gateway_audit_spooled") == 0
