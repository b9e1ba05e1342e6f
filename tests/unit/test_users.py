"""The user directory file: what loads, and each mistake named by its key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.passwords import hash_secret
from gateway.auth.users import load_users
from gateway.core.mapping_reader import ConfigError
from gateway.core.principal import Scope
from gateway.order_settings import OrderSettings, RatePolicy, RiskPolicy, RiskRules, UserLimits

ACCOUNTS = ("desk-alpha", "desk-beta")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "users.example.yaml"


def user(**fields: Any) -> dict[str, Any]:
    return {"id": "bot", "name": "A bot", "scopes": ["market:read"], "account": "desk-alpha",
            **fields}


def write(tmp_path: Path, *users: dict[str, Any]) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": list(users)}), encoding="utf-8")
    return path


def test_the_example_file_loads_with_its_scopes_markets_and_accounts() -> None:
    directory = load_users(EXAMPLE, ACCOUNTS)
    bot = directory.get("pricing-bot")
    assert bot is not None
    assert (bot.scopes, bot.markets, bot.account) == (
        frozenset({Scope.MARKET_READ}), frozenset({"BCCBTC", "BTGBTC"}), "desk-alpha")
    trader = directory.get("demo-trader")
    assert trader is not None
    assert trader.markets is None
    reporting = directory.get("reporting-job")
    assert reporting is not None
    assert reporting.secret_hash is None


def test_a_users_repr_does_not_show_its_secret_hash(tmp_path: Path) -> None:
    encoded = hash_secret("a-long-enough-secret")
    directory = load_users(write(tmp_path, user(secret_hash=encoded)), ACCOUNTS)
    assert encoded not in repr(directory.all())


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"secret_hash": "plain-text-secret"}, "users[0].secret_hash"),
        ({"scopes": ["market:read", "trade:everything"]}, "users[0].scopes"),
        ({"account": "desk-omega"}, "users[0].account"),
        ({"markets": "BCCBTC"}, "users[0].markets"),
        ({"colour": "blue"}, "users[0].colour"),
    ],
)
def test_each_mistake_is_named_by_its_key(
    tmp_path: Path, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_users(write(tmp_path, user(**fields)), ACCOUNTS)


def test_two_users_with_one_id_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate user id"):
        load_users(write(tmp_path, user(), user()), ACCOUNTS)


def test_a_users_own_limits_and_risk_override_the_defaults(tmp_path: Path) -> None:
    defaults = OrderSettings(
        limits=UserLimits(place=RatePolicy(10, 1.0)),
        risk=RiskRules(default=RiskPolicy(max_order_amount=Decimal(100))))
    path = write(tmp_path, user(
        id="careful", limits={"place": {"count": 2, "window": 5}},
        risk={"markets": {"BCCBTC": {"max_notional": "1"}}}), user(id="plain"))
    directory = load_users(path, ACCOUNTS, defaults)
    careful, plain = directory.get("careful"), directory.get("plain")
    assert careful is not None
    assert plain is not None
    assert careful.limits.place == RatePolicy(2, 5.0)
    assert careful.limits.cancel == defaults.limits.cancel
    assert careful.risk.for_market("BCCBTC") == RiskPolicy(Decimal(100), Decimal(1))
    assert careful.risk.for_market("ETHBTC") == RiskPolicy(Decimal(100))
    assert plain.limits == defaults.limits
    assert plain.risk == defaults.risk
