"""Every ``web.AppKey`` and ``web.RequestKey`` of the gateway, nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.auth.authenticator import Authenticator
from gateway.auth.grants import ClientCredentialsGrant
from gateway.auth.secret import Secret
from gateway.auth.signing import KeyRing
from gateway.core.cluster_state import ClusterState
from gateway.core.principal import Principal
from gateway.fanout.hub import Hub
from gateway.lifecycle import Lifecycle
from gateway.services.audit_trail import AuditTrail
from gateway.services.kill_switches import KillSwitches
from gateway.services.market_data import MarketData
from gateway.services.order_desk import OrderDesk, Settlement
from gateway.services.order_views import OrderViews
from gateway.services.read_limits import ReadLimits
from gateway.services.reconciler import Reconciler
from gateway.services.state_loss import StateLoss
from gateway.services.write_spool import WriteSpool
from gateway.settings import Settings
from gateway.stores.revocation import RevocationStore
from gateway.telemetry import Telemetry
from gateway.upstream.rest import UpstreamClient

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
KEYRING = web.AppKey("keyring", KeyRing)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
GRANT = web.AppKey("grant", ClientCredentialsGrant)
REVOCATIONS = web.AppKey("revocations", RevocationStore)
UPSTREAM = web.AppKey("upstream", UpstreamClient)
TELEMETRY = web.AppKey("telemetry", Telemetry)
MARKET_DATA = web.AppKey("market_data", MarketData)
ORDER_DESK = web.AppKey("order_desk", OrderDesk)
ORDER_VIEWS = web.AppKey("order_views", OrderViews)
KILL_SWITCHES = web.AppKey("kill_switches", KillSwitches)
AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
SETTLEMENTS = web.AppKey("settlements", WriteSpool[Settlement])
RECONCILER = web.AppKey("reconciler", Reconciler)
READ_LIMITS = web.AppKey("read_limits", ReadLimits)
# This replica's memory of the shared state in Redis, and acknowledging its loss.
CLUSTER_STATE = web.AppKey("cluster_state", ClusterState)
STATE_LOSS = web.AppKey("state_loss", StateLoss)
FANOUT = web.AppKey("fanout", Hub)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
# Open WebSocket connections per user (the per-user connection limit).
WS_USERS: web.AppKey[Counter[str]] = web.AppKey("ws_users")
ACCOUNT_TOKENS: web.AppKey[Mapping[str, Secret]] = web.AppKey("account_tokens")
# The JWKS document rendered once: it changes only with the configuration.
JWKS_BODY = web.AppKey("jwks_body", bytes)
# The OpenAPI description rendered once: it changes only with the code.
OPENAPI_BODY = web.AppKey("openapi_body", bytes)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
