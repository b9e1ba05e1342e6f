"""What ``make demo`` prints: where the simulator listens, a token, and calls to try."""

from __future__ import annotations

from simulator.config import SimConfig

WS_ONE_LINER = (
    r'import asyncio,aiohttp;exec("async def main():\n async with aiohttp.ClientSession() as s,'
    r' s.ws_connect(\"{ws}\") as ws:\n  await ws.send_json({{\"method\":\"depth.subscribe\",'
    r'\"params\":[\"{market}\",10,\"0\"],\"id\":1}})\n  async for m in ws: print(m.data)");'
    r"asyncio.run(main())"
)


def demo_banner(config: SimConfig, host: str, port: int) -> str:
    account = config.accounts[0]
    market = next(iter(config.markets))
    base = f"http://{host}:{port}"
    ws = f"ws://{host}:{port}/ws"
    auth = f'-H "Authorization: Bearer {account.token}"'
    return "\n".join([
        "Expie simulator",
        f"  REST      {base}/v1",
        f"  WebSocket {ws}",
        f"  account   {account.name} (user {account.user_id})",
        f"  token     {account.token}",
        "",
        "Try:",
        f"  curl -s {auth} {base}/v1/markets/{market}/ticker",
        f"  curl -s {auth} -d side=2 -d amount=1 -d price=0.13 {base}/v1/markets/{market}/orders",
        f"  .venv/bin/python -c '{WS_ONE_LINER.format(ws=ws, market=market)}'",
        "",
        "Ctrl-C stops it.",
    ])
