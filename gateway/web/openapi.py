"""``GET /openapi.json`` (OpenAPI 3.1) and ``GET /.well-known/oauth-authorization-server``
(RFC 8414): what the gateway serves, for clients and for the fuzzer that checks it.

The description is built from the same tables the router is (``EXCHANGE_ROUTES``, the body
limits, the scopes), once per process; a test holds it to the route table. The exchange's own
answers pass through unchanged, so their bodies are described only as JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.core.principal import Scope
from gateway.core.wire import MAX_INT64, MAX_PAGE_VALUE
from gateway.keys import OPENAPI_BODY, SETTINGS
from gateway.settings import Settings
from gateway.web.bodies import ADMIN_BODY_LIMIT, ORDER_BODY_LIMIT, TOKEN_BODY_LIMIT
from gateway.web.exchange import EXCHANGE_ROUTES, INTEGER_PARAMETERS

Json = dict[str, Any]
TOKEN_PATH = "/auth/token"
JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
OPENAPI_PATH = "/openapi.json"

_ERROR = {"$ref": "#/components/responses/Error"}
_PUBLIC_ERRORS = {"400": _ERROR, "408": _ERROR, "413": _ERROR, "414": _ERROR, "431": _ERROR}
_AUTH_ERRORS = {**_PUBLIC_ERRORS, "401": _ERROR, "403": _ERROR, "429": _ERROR}
_UPSTREAM_ERRORS = {"502": _ERROR, "503": _ERROR, "504": _ERROR}
_EXCHANGE_ANSWER = {"description": "the exchange's answer, unchanged",
                    "content": {"application/json": {"schema": {}}}}
_DESCRIPTIONS = {
    "/v1/markets/{market}/ticker": "The market's ticker, from the shared cache (X-Cache).",
    "/v1/markets": "Every market of the exchange, from the shared cache.",
    "/v1/markets/{market}/depth": "The market's order book, from the shared cache.",
    "/v1/markets/{market}/orders/_pending": "The caller's resting orders (the account's with "
                                            "orders:desk).",
    "/v1/markets/{market}/orders/_finished": "The caller's finished orders.",
    "/v1/markets/{market}/orders/{order_id}": "The deals of one of the caller's orders.",
    "/v1/balance/summary": "The balances of the caller's upstream account.",
    "/v1/balance/history": "The balance history of the caller's upstream account.",
}


def openapi_document() -> Json:
    paths: dict[str, Json] = {}
    for route in EXCHANGE_ROUTES:
        operation = _operation(_DESCRIPTIONS.get(route.template, route.template), route.scope,
                               _exchange_parameters(route.template, route.query),
                               {"200": _EXCHANGE_ANSWER, **_AUTH_ERRORS, "404": _ERROR,
                                **_UPSTREAM_ERRORS})
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    paths["/v1/markets/{market}/orders"] = {"post": _place()}
    paths["/v1/markets/{market}/orders/{order_id}/_cancel"] = {"post": _cancel()}
    paths.update(_own_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "Expie Gateway", "version": __version__,
                 "description": "Authenticated REST gateway in front of the Expie exchange API. "
                                "WebSocket: GET /ws, Expie's JSON-RPC (see the README)."},
        "paths": paths,
        "components": {
            "securitySchemes": {"gateway": {
                "type": "oauth2", "description": "A gateway token: Authorization: Bearer <JWT>",
                "flows": {"clientCredentials": {
                    "tokenUrl": TOKEN_PATH,
                    "scopes": {scope.value: _SCOPE_TEXT[scope] for scope in Scope}}}}},
            "schemas": _schemas(),
            "responses": {"Error": {
                "description": "the gateway's error",
                "headers": {"X-Request-Id": {"schema": {"type": "string"}}},
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


async def oauth_metadata(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    base = settings.server.public_url or f"{request.scheme}://{request.host}"
    return web.json_response(authorization_server_metadata(settings, base),
                             headers={"Cache-Control": "public, max-age=300"})


def authorization_server_metadata(settings: Settings, base_url: str) -> Json:
    """RFC 8414 §2: enough for a discovery-based client to need only the base URL."""
    return {
        "issuer": settings.auth.issuer,
        "token_endpoint": base_url + TOKEN_PATH,
        "jwks_uri": base_url + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": sorted(scope.value for scope in Scope),
        "service_documentation": base_url + OPENAPI_PATH,
    }


_SCOPE_TEXT = {
    Scope.MARKET_READ: "market data (REST and WebSocket)",
    Scope.ORDERS_READ: "the caller's own orders",
    Scope.ORDERS_WRITE: "place and cancel orders",
    Scope.BALANCE_READ: "the account's balances",
    Scope.ORDERS_DESK: "every order of the account",
    Scope.ADMIN: "kill switches, the audit trail, revocation, acknowledging a state loss",
}


def _operation(summary: str, scope: Scope | None, parameters: list[Json],
               responses: Json, body: Json | None = None) -> Json:
    operation: Json = {"summary": summary, "parameters": parameters, "responses": responses,
                       "security": [{"gateway": [scope.value]}] if scope else []}
    if body is not None:
        operation["requestBody"] = body
    return operation


def _path_parameter(name: str) -> Json:
    if name == "order_id":
        schema: Json = {"type": "string", "pattern": "^[0-9]{1,19}$"}
        text = f"an order id (ASCII digits, at most {MAX_INT64})"
    else:
        schema = {"type": "string", "minLength": 1, "maxLength": 15}
        text = "a market the exchange lists (404 unknown_market otherwise)"
    return {"name": name, "in": "path", "required": True, "description": text, "schema": schema}


def _exchange_parameters(template: str, query: frozenset[str]) -> list[Json]:
    names = [part[1:-1] for part in template.split("/") if part.startswith("{")]
    parameters = [_path_parameter(name) for name in names]
    for name in sorted(query):
        schema: Json = ({"type": "integer", "minimum": 0, "maximum": MAX_PAGE_VALUE}
                        if name in INTEGER_PARAMETERS else {"type": "string"})
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    return parameters


_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "repeats of the same call answer the first result, never a "
                               "second order", "schema": {"type": "string", "minLength": 1,
                                                          "maxLength": 255}}
_ORDER_ERRORS = {**_AUTH_ERRORS, "404": _ERROR, "409": _ERROR, "422": _ERROR, "423": _ERROR,
                 **_UPSTREAM_ERRORS}


def _place() -> Json:
    order = {"$ref": "#/components/schemas/Order"}
    body = {"required": True, "description": f"at most {ORDER_BODY_LIMIT} bytes",
            "content": {"application/x-www-form-urlencoded": {"schema": order},
                        "application/json": {"schema": order}}}
    return _operation("Place an order (validated, limited, audited, then sent).",
                      Scope.ORDERS_WRITE,
                      [_path_parameter("market"), _IDEMPOTENCY],
                      {"200": _EXCHANGE_ANSWER, **_ORDER_ERRORS}, body)


def _cancel() -> Json:
    return _operation("Cancel one of the caller's orders.", Scope.ORDERS_WRITE,
                      [_path_parameter("market"), _path_parameter("order_id"), _IDEMPOTENCY],
                      {"200": _EXCHANGE_ANSWER, **_ORDER_ERRORS})


def _json_body(schema: Json, limit: int) -> Json:
    return {"required": True, "description": f"at most {limit} bytes, UTF-8",
            "content": {"application/json": {"schema": schema}}}


def _json_answer(description: str) -> Json:
    return {"description": description, "content": {"application/json": {
        "schema": {"type": "object"}}}}


def _own_paths() -> dict[str, Json]:
    audit_query = [{"name": name, "in": "query", "required": False,
                    "schema": {"type": "string"}}
                   for name in ("user", "account", "market", "action", "kind", "outcome")]
    audit_query += [{"name": name, "in": "query", "required": False,
                     "schema": {"type": "number", "description": "seconds since the epoch"}}
                    for name in ("since", "until")]
    audit_query += [
        {"name": "after", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_VALUE}},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}]
    oauth_error = {"description": "RFC 6749 §5.2", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/OAuthError"}}}}
    token_body = {"required": True, "description": f"at most {TOKEN_BODY_LIMIT} bytes",
                  "content": {"application/x-www-form-urlencoded": {
                      "schema": {"$ref": "#/components/schemas/TokenRequest"}}}}
    return {
        TOKEN_PATH: {"post": _operation(
            "A gateway token for a client's credentials (HTTP Basic or the form).", None, [],
            {"200": {"description": "a token", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Token"}}}},
             "400": oauth_error, "401": oauth_error, "429": oauth_error, "503": oauth_error,
             "408": _ERROR, "413": _ERROR}, token_body)},
        JWKS_PATH: {"get": _operation("The public keys that verify gateway tokens.", None, [],
                                      {"200": {"description": "a JWK set", "content": {
                                          "application/jwk-set+json": {
                                              "schema": {"type": "object"}}}}})},
        METADATA_PATH: {"get": _operation("OAuth 2.0 authorization server metadata (RFC 8414).",
                                          None, [], {"200": _json_answer("the metadata")})},
        OPENAPI_PATH: {"get": _operation("This description.", None, [],
                                         {"200": _json_answer("OpenAPI 3.1")})},
        "/admin/tokens/revoke": {"post": _operation(
            "Revoke a token (by jti or whole token) or every token of a user.", Scope.ADMIN, [],
            {"200": _json_answer("what was revoked"), **_AUTH_ERRORS, "503": _ERROR},
            _json_body({"$ref": "#/components/schemas/Revocation"}, ADMIN_BODY_LIMIT))},
        "/admin/kill-switch": {
            "post": _operation(
                "Engage or release a kill switch.", Scope.ADMIN, [],
                {"200": _json_answer("the switch"), **_AUTH_ERRORS, "503": _ERROR},
                _json_body({"$ref": "#/components/schemas/KillSwitch"}, ADMIN_BODY_LIMIT)),
            "get": _operation("The engaged kill switches.", Scope.ADMIN, [],
                              {"200": _json_answer("the switches"), **_AUTH_ERRORS})},
        "/admin/audit": {"get": _operation(
            "Audit records, oldest first.", Scope.ADMIN, audit_query,
            {"200": _json_answer("a page of records"), **_AUTH_ERRORS, "503": _ERROR})},
        "/admin/state-loss/acknowledge": {"post": _operation(
            "Acknowledge that Redis lost the shared state: a new epoch and audit segment; order "
            "calls resume.", Scope.ADMIN, [],
            {"200": _json_answer("the new segment's first record"), **_AUTH_ERRORS,
             "409": _ERROR, "503": _ERROR},
            _json_body({"$ref": "#/components/schemas/StateLossAcknowledgement"},
                       ADMIN_BODY_LIMIT))},
        "/ws": {"get": _operation(
            "WebSocket upgrade: Expie's JSON-RPC through the fan-out.", Scope.MARKET_READ, [],
            {"101": {"description": "switching protocols"}, **_AUTH_ERRORS, "426": _ERROR})},
        "/healthz": {"get": _operation("The process answers.", None, [],
                                       {"200": _json_answer("ok")})},
        "/readyz": {"get": _operation(
            "This replica takes traffic (503 while starting or draining).", None, [],
            {"200": _json_answer("ready"), "503": _json_answer("starting or draining")})},
        "/metrics": {"get": _operation("Prometheus text.", None, [], {"200": {
            "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    }


def _schemas() -> Json:
    decimal = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message", "request_id"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "request_id": {"type": "string"}}}}},
        "OAuthError": {"type": "object", "required": ["error", "error_description"],
                       "properties": {"error": {"type": "string"},
                                      "error_description": {"type": "string"}}},
        "Order": {"type": "object", "required": ["side", "amount"],
                  "additionalProperties": False,
                  "properties": {"side": {"type": "string", "enum": ["1", "2"],
                                          "description": "1 sell, 2 buy"},
                                 "amount": decimal,
                                 "price": {**decimal, "description": "absent: a market order"}}},
        "TokenRequest": {"type": "object", "required": ["grant_type"], "properties": {
            "grant_type": {"type": "string", "enum": ["client_credentials"]},
            "client_id": {"type": "string"}, "client_secret": {"type": "string"},
            "scope": {"type": "string"}}},
        "Token": {"type": "object",
                  "required": ["access_token", "token_type", "expires_in", "scope"],
                  "properties": {"access_token": {"type": "string"},
                                 "token_type": {"type": "string", "enum": ["Bearer"]},
                                 "expires_in": {"type": "integer"},
                                 "scope": {"type": "string"}}},
        "Revocation": {"type": "object", "minProperties": 1, "maxProperties": 1,
                       "properties": {name: {"type": "string", "minLength": 1}
                                      for name in ("jti", "token", "user")}},
        "StateLossAcknowledgement": {
            "type": "object", "required": ["reason"], "additionalProperties": False,
            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}}},
        "KillSwitch": {"type": "object", "required": ["scope"], "additionalProperties": False,
                       "properties": {
                           "scope": {"type": "string", "enum": ["desk", "account", "user"]},
                           "target": {"type": "string"}, "engaged": {"type": "boolean"},
                           "reason": {"type": "string", "maxLength": 500},
                           "cancel_pending": {"type": "boolean"}}},
    }
