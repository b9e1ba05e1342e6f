"""Every AppKey and RequestKey of the simulator, nothing else."""

from __future__ import annotations

from aiohttp import web

from simulator.config import AccountSpec, SimConfig
from simulator.engine.exchange import Exchange
from simulator.faults import Faults
from simulator.stats import RestCounters
from simulator.ws.server import WsServer

CONFIG = web.AppKey("config", SimConfig)
EXCHANGE = web.AppKey("exchange", Exchange)
FAULTS = web.AppKey("faults", Faults)
COUNTERS = web.AppKey("counters", RestCounters)
ACCOUNTS_BY_TOKEN = web.AppKey("accounts_by_token", dict[str, AccountSpec])
WS_SERVER = web.AppKey("ws_server", WsServer)
ACCOUNT = web.RequestKey("account", AccountSpec)
