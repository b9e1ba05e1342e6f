"""The simulator's configuration: the shipped file loads; a bad file is refused naming the key."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core.mapping_reader import ConfigError
from simulator.config import SimConfig, load_config, parse_config

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "simulator.yaml"


def minimal() -> dict[str, Any]:
    return {
        "control_token": "control",
        "assets": {"BTC": {"prec_save": 20}, "BCC": {}},
        "markets": [{
            "name": "BCCBTC", "stock": "BCC", "money": "BTC",
            "stock_precision": 4, "money_precision": 6, "engine_money_precision": 8,
            "maker_fee_rate": "0", "taker_fee_rate": "0.001", "order_min_vol": "0.001",
            "market_order_enabled": False, "market_order_min_money": "0.001",
            "initial_price": "0.1345",
        }],
        "accounts": [
            {"name": "a", "user_id": 1, "token": "token-a", "balances": {"BTC": "1"}},
            {"name": "b", "user_id": 2, "token": "token-b",
             "fee_rates": {"maker": "0.0006", "taker": "0.0006"}},
        ],
    }


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


# --- the shipped file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> SimConfig:
    return load_config(SHIPPED)


def test_shipped_config_has_the_expie_markets(shipped: SimConfig) -> None:
    assert len(shipped.markets) >= 3
    assert {"BCCBTC", "BTGBTC"} <= set(shipped.markets)
    assert any(spec.market_order_enabled for spec in shipped.markets.values())
    assert any(spec.taker_fee_rate > 0 for spec in shipped.markets.values())
    for spec in shipped.markets.values():
        assert spec.stock in shipped.assets
        assert spec.money in shipped.assets


def test_shipped_config_has_funded_accounts_with_distinct_tokens(shipped: SimConfig) -> None:
    assert len(shipped.accounts) >= 3
    tokens = [account.token for account in shipped.accounts]
    assert all(tokens)
    assert len(set(tokens)) == len(tokens)
    for account in shipped.accounts:
        assert account.balances
        assert all(amount > 0 for amount in account.balances.values())


def test_shipped_config_keeps_engine_and_advertised_precision_apart(shipped: SimConfig) -> None:
    bcc = shipped.markets["BCCBTC"]
    assert (bcc.money_precision, bcc.engine_money_precision) == (6, 8)


def test_tokens_are_hidden_from_repr(shipped: SimConfig) -> None:
    text = repr(shipped)
    assert shipped.control_token not in text
    assert all(account.token not in text for account in shipped.accounts)


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config(minimal())
    market = config.markets["BCCBTC"]
    assert market.fee_precision == 4
    assert market.enabled is True
    assert market.taker_fee_rate == Decimal("0.001")
    assert config.push_interval == 0.5
    assert config.ws.depth_limits == (1, 5, 10, 20, 30, 50, 100)
    assert config.assets["BCC"].prec_save == 20
    assert config.accounts[1].fee_rates is not None
    assert config.accounts[1].fee_rates.maker == Decimal("0.0006")
    assert config.accounts[0].fee_rates is None


def test_engine_money_precision_defaults_to_the_advertised_one() -> None:
    data = minimal()
    del data["markets"][0]["engine_money_precision"]
    assert parse_config(data).markets["BCCBTC"].engine_money_precision == 6


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("assets: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    assert set(load_config(path).markets) == {"BCCBTC"}


# --- refusals, each naming the key -----------------------------------------------------------


def mutated(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(minimal())
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("colour",), "blue", "colour"),
        (("markets", 0, "stock_prec"), 4, "markets[0].stock_prec"),
        (("assets", "BTC", "precision"), 8, "assets.BTC.precision"),
        (("accounts", 1, "fee_rates", "makr"), "0.1", "accounts[1].fee_rates.makr"),
        (("ws",), {"keep_alive": 10, "keepalive": 10}, "ws.keepalive"),
    ],
)
def test_unknown_key(path: tuple[str | int, ...], value: object, key: str) -> None:
    message = refused(mutated(path, value))
    assert message == f"{key}: unknown key"


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (("control_token",), "control_token"),
        (("markets", 0, "stock"), "markets[0].stock"),
        (("markets", 0, "order_min_vol"), "markets[0].order_min_vol"),
        (("markets", 0, "market_order_enabled"), "markets[0].market_order_enabled"),
        (("accounts", 0, "token"), "accounts[0].token"),
        (("accounts", 1, "fee_rates", "taker"), "accounts[1].fee_rates.taker"),
        (("assets",), "assets"),
        (("markets",), "markets"),
    ],
)
def test_missing_required_key(path: tuple[str | int, ...], key: str) -> None:
    data = copy.deepcopy(minimal())
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    message = refused(data)
    assert message == f"{key}: required key is missing"


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("markets", 0, "stock_precision"), "4", "markets[0].stock_precision"),
        (("markets", 0, "stock_precision"), -1, "markets[0].stock_precision"),
        (("markets", 0, "stock_precision"), True, "markets[0].stock_precision"),
        (("markets", 0, "maker_fee_rate"), 0.001, "markets[0].maker_fee_rate"),  # float, not text
        (("markets", 0, "maker_fee_rate"), "abc", "markets[0].maker_fee_rate"),
        (("markets", 0, "maker_fee_rate"), "NaN", "markets[0].maker_fee_rate"),
        (("markets", 0, "taker_fee_rate"), "-0.1", "markets[0].taker_fee_rate"),
        (("markets", 0, "taker_fee_rate"), "1", "markets[0].taker_fee_rate"),
        (("markets", 0, "market_order_enabled"), "yes", "markets[0].market_order_enabled"),
        (("markets", 0, "name"), "", "markets[0].name"),
        (("markets", 0, "name"), 7, "markets[0].name"),
        (("accounts", 0, "user_id"), 0, "accounts[0].user_id"),
        (("accounts", 0, "user_id"), "1", "accounts[0].user_id"),
        (("accounts", 0, "balances"), ["BTC"], "accounts[0].balances"),
        (("accounts", 0, "balances", "BTC"), "-1", "accounts[0].balances.BTC"),
        (("accounts", 1, "fee_rates", "maker"), "1", "accounts[1].fee_rates.maker"),
        (("accounts", 1, "fee_rates", "taker"), "2.5", "accounts[1].fee_rates.taker"),
        (("push_interval",), 0, "push_interval"),
        (("push_interval",), "fast", "push_interval"),
        (("assets",), ["BTC"], "assets"),
        (("markets",), {}, "markets"),
        (("accounts",), [], "accounts"),
        (("markets", 0), "BCCBTC", "markets[0]"),
    ],
)
def test_wrong_type_or_value(path: tuple[str | int, ...], value: object, key: str) -> None:
    message = refused(mutated(path, value))
    assert message.startswith(f"{key}:"), message


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("ws",), {"depth_limits": [1, "5"]}, "ws.depth_limits"),
        (("ws",), {"depth_intervals": ["0", "fine"]}, "ws.depth_intervals"),
        (("ws",), {"keep_alive": -1}, "ws.keep_alive"),
        (("ws",), {"max_message_size": 0}, "ws.max_message_size"),
        (("ws",), "loud", "ws"),
    ],
)
def test_bad_ws_section(path: tuple[str | int, ...], value: object, key: str) -> None:
    message = refused(mutated(path, value))
    assert message.startswith(f"{key}:"), message


def test_market_on_undefined_asset() -> None:
    message = refused(mutated(("markets", 0, "money"), "USD"))
    assert message.startswith("markets[0].money:")
    assert "'USD'" in message


def test_balance_in_undefined_asset() -> None:
    message = refused(mutated(("accounts", 0, "balances"), {"DOGE": "1"}))
    assert message.startswith("accounts[0].balances.DOGE:")


def test_market_precisions_must_fit_the_stored_precision() -> None:
    data = mutated(("assets", "BTC", "prec_save"), 12)  # 4 + 8 + 4 fee digits > 12
    assert refused(data).startswith("markets[0].stock_precision:")


@pytest.mark.parametrize("attribute", ["token", "name", "user_id"])
def test_duplicate_accounts(attribute: str) -> None:
    data = minimal()
    data["accounts"][1][attribute] = data["accounts"][0][attribute]
    message = refused(data)
    assert message.startswith("accounts")
    assert re.search(rf"\b{attribute}\b", message)


def test_duplicate_market_name() -> None:
    data = minimal()
    data["markets"].append({**data["markets"][0], "taker_fee_rate": "0.5"})
    message = refused(data)
    assert message.startswith("markets[1].name:")
    assert "BCCBTC" in message
