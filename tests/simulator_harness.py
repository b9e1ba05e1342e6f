"""A running simulator for tests: a real server on a free loopback port and a client for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from simulator.config import SimConfig, load_config
from simulator.engine.exchange import Exchange
from simulator.keys import EXCHANGE

CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "simulator.yaml"
TEST_PUSH_INTERVAL = 0.05


def load_test_config(push_interval: float = TEST_PUSH_INTERVAL) -> SimConfig:
    return load_config(CONFIG_PATH).with_push_interval(push_interval)


@dataclass
class RunningSimulator:
    server: TestServer
    config: SimConfig
    http: aiohttp.ClientSession

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def exchange(self) -> Exchange:
        return self.app[EXCHANGE]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def ws_url(self) -> str:
        return self.url("/ws").replace("http://", "ws://", 1)

    def token(self, account: str = "desk-alpha") -> str:
        return next(a.token for a in self.config.accounts if a.name == account)

    def user_id(self, account: str = "desk-alpha") -> int:
        return next(a.user_id for a in self.config.accounts if a.name == account)

    def auth(self, account: str = "desk-alpha") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(account)}"}

    def control(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.control_token}"}

    async def get(self, path: str, account: str = "desk-alpha", **params: Any) -> Any:
        async with self.http.get(self.url(path), headers=self.auth(account),
                                 params=params) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def place(self, market: str, side: int, amount: str, price: str | None = None,
                    account: str = "desk-alpha") -> Any:
        form = {"side": str(side), "amount": amount}
        if price is not None:
            form["price"] = price
        async with self.http.post(self.url(f"/v1/markets/{market}/orders"), data=form,
                                  headers=self.auth(account)) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def stats(self) -> Any:
        async with self.http.get(self.url("/_sim/stats"), headers=self.control()) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def set_faults(self, **knobs: Any) -> Any:
        async with self.http.post(self.url("/_sim/faults"), json=knobs,
                                  headers=self.control()) as response:
            assert response.status == 200, await response.text()
            return await response.json()
