"""``/openapi.json`` and the RFC 8414 metadata: valid, and true to the routes the gateway serves."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from gateway.web.exchange import EXCHANGE_ROUTES
from tests.e2e.test_gateway_tokens import SECRETS, basic
from tests.gateway_harness import RunningGateway

METHODS = {"get", "post", "put", "patch", "delete"}


async def description(gw: RunningGateway) -> dict[str, Any]:
    status, body, headers = await gw.call("GET", "/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    return body  # type: ignore[no-any-return]


async def test_the_description_is_valid_openapi_3_1(gw: RunningGateway) -> None:
    document = await description(gw)
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_the_description_names_exactly_the_routes_served(gw: RunningGateway) -> None:
    document = await description(gw)
    described = {(method.upper(), path) for path, item in document["paths"].items()
                 for method in item if method in METHODS}
    app = gw.server.app
    assert app is not None
    served = {(route.method, route.resource.canonical)
              for route in app.router.routes()
              if route.resource is not None and route.method != "*"}
    assert described == served


async def test_each_exchange_route_is_described_with_its_scope(gw: RunningGateway) -> None:
    document = await description(gw)
    for route in EXCHANGE_ROUTES:
        operation = document["paths"][route.template][route.method.lower()]
        assert operation["security"] == [{"gateway": [route.scope.value]}], route.template


async def test_a_token_without_the_described_scope_is_refused_on_every_get(
    gw: RunningGateway,
) -> None:
    """What the description says a call needs is what the gateway enforces."""
    document = await description(gw)
    token = gw.token("desk-admin", scopes=[])
    for path, item in document["paths"].items():
        operation = item.get("get")
        if operation is None or not operation["security"]:
            continue
        concrete = path.replace("{market}", "BCCBTC").replace("{order_id}", "1")
        status, body, _ = await gw.call("GET", concrete, token)
        assert (status, body["error"]["code"]) == (403, "insufficient_scope"), path


async def test_the_metadata_lets_a_client_discover_and_use_the_token_endpoint(
    gw: RunningGateway,
) -> None:
    status, metadata, _ = await gw.call("GET", "/.well-known/oauth-authorization-server")
    assert status == 200
    base = gw.url("").rstrip("/")
    assert metadata["issuer"] == gw.settings.auth.issuer
    assert metadata["token_endpoint"] == f"{base}/auth/token"
    assert metadata["jwks_uri"] == f"{base}/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post"}
    assert "orders:write" in metadata["scopes_supported"]
    async with gw.http.post(metadata["token_endpoint"],
                            data={"grant_type": "client_credentials"},
                            headers=basic("demo-trader", SECRETS["demo-trader"])) as response:
        assert response.status == 200
    async with gw.http.get(metadata["jwks_uri"]) as response:
        assert response.status == 200
