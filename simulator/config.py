"""The simulator's configuration: markets, assets, accounts, WebSocket and control settings.

Loaded from YAML and validated up front; a bad file stops start-up with a ``ConfigError`` naming
the offending key. Nothing here touches the network or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from gateway.core.decimals import parse_decimal
from gateway.core.mapping_reader import ConfigError, MappingReader

DEFAULT_DEPTH_LIMITS = (1, 5, 10, 20, 30, 50, 100)
DEFAULT_DEPTH_INTERVALS = (
    "0", "0.00000001", "0.0000001", "0.000001", "0.00001", "0.0001", "0.001", "0.01", "0.1",
)


@dataclass(frozen=True, slots=True)
class AssetSpec:
    name: str
    prec_save: int
    prec_show: int
    min_deposit: Decimal
    min_withdraw: Decimal


@dataclass(frozen=True, slots=True)
class MarketSpec:
    name: str
    stock: str
    money: str
    stock_precision: int
    money_precision: int
    engine_money_precision: int
    fee_precision: int
    maker_fee_rate: Decimal
    taker_fee_rate: Decimal
    order_min_vol: Decimal
    market_order_enabled: bool
    market_order_min_money: Decimal
    enabled: bool
    initial_price: Decimal


@dataclass(frozen=True, slots=True)
class FeeRates:
    maker: Decimal
    taker: Decimal


@dataclass(frozen=True, slots=True)
class AccountSpec:
    name: str
    user_id: int
    token: str = field(repr=False)
    balances: Mapping[str, Decimal]
    fee_rates: FeeRates | None


@dataclass(frozen=True, slots=True)
class WsSettings:
    keep_alive: float = 3600.0
    max_message_size: int = 102400
    unknown_method_error: bool = False
    depth_limits: tuple[int, ...] = DEFAULT_DEPTH_LIMITS
    depth_intervals: tuple[str, ...] = DEFAULT_DEPTH_INTERVALS
    full_snapshot_every: float = 60.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    assets: Mapping[str, AssetSpec]
    markets: Mapping[str, MarketSpec]
    accounts: tuple[AccountSpec, ...]
    control_token: str = field(repr=False)
    push_interval: float = 0.5
    ws: WsSettings = WsSettings()

    def with_push_interval(self, seconds: float) -> SimConfig:
        return SimConfig(
            self.assets, self.markets, self.accounts, self.control_token, seconds, self.ws)


def load_config(path: Path) -> SimConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path.name}: {exc}") from exc
    return parse_config(data)


def parse_config(data: object) -> SimConfig:
    root = MappingReader(data, "")
    assets_section = root.section("assets")
    assets = {name: _asset(name, assets_section.section(name)) for name in assets_section.names()}
    markets: dict[str, MarketSpec] = {}
    for path, section in root.items("markets"):
        spec = _market(section, assets)
        if spec.name in markets:
            raise ConfigError(f"{path}.name: duplicate market {spec.name!r}")
        markets[spec.name] = spec
    accounts = tuple(_account(s, assets) for _, s in root.items("accounts"))
    _check_unique(accounts)
    config = SimConfig(
        assets=assets,
        markets=markets,
        accounts=accounts,
        control_token=root.text("control_token"),
        push_interval=root.number("push_interval", 0.5),
        ws=_ws(root.section("ws", {})),
    )
    root.done()
    return config


def _asset(name: str, section: MappingReader) -> AssetSpec:
    spec = AssetSpec(
        name=name,
        prec_save=section.integer("prec_save", 20),
        prec_show=section.integer("prec_show", 8),
        min_deposit=section.decimal("min_deposit", "0.001"),
        min_withdraw=section.decimal("min_withdraw", "0.001"),
    )
    section.done()
    return spec


def _market(section: MappingReader, assets: Mapping[str, AssetSpec]) -> MarketSpec:
    money_precision = section.integer("money_precision")
    spec = MarketSpec(
        name=section.text("name"),
        stock=section.text("stock"),
        money=section.text("money"),
        stock_precision=section.integer("stock_precision"),
        money_precision=money_precision,
        engine_money_precision=section.integer("engine_money_precision", money_precision),
        fee_precision=section.integer("fee_precision", 4),
        maker_fee_rate=section.decimal("maker_fee_rate"),
        taker_fee_rate=section.decimal("taker_fee_rate"),
        order_min_vol=section.decimal("order_min_vol"),
        market_order_enabled=section.flag("market_order_enabled"),
        market_order_min_money=section.decimal("market_order_min_money"),
        enabled=section.flag("enabled", True),
        initial_price=section.decimal("initial_price"),
    )
    section.done()
    for role in ("stock", "money"):
        if getattr(spec, role) not in assets:
            raise ConfigError(f"{section.key(role)}: asset {getattr(spec, role)!r} is not defined")
    _check_precisions(spec, assets, section)
    return spec


def _check_precisions(
    spec: MarketSpec, assets: Mapping[str, AssetSpec], section: MappingReader
) -> None:
    """The engine's own constraints: fills and fees must fit the assets' stored precision."""
    stock_save, money_save = assets[spec.stock].prec_save, assets[spec.money].prec_save
    money_fee_digits = spec.stock_precision + spec.engine_money_precision + spec.fee_precision
    if (spec.stock_precision + spec.fee_precision > stock_save
            or money_fee_digits > money_save):
        raise ConfigError(f"{section.key('stock_precision')}: market precisions exceed prec_save")
    for key in ("maker_fee_rate", "taker_fee_rate"):
        if getattr(spec, key) >= 1:
            raise ConfigError(f"{section.key(key)}: fee rates must be below 1")


def _account(section: MappingReader, assets: Mapping[str, AssetSpec]) -> AccountSpec:
    balances_section = section.section("balances", {})
    balances = {asset: balances_section.decimal(asset) for asset in balances_section.names()}
    balances_section.done()
    for asset in balances:
        if asset not in assets:
            raise ConfigError(f"{balances_section.key(asset)}: asset is not defined")
    fees_raw = section.raw("fee_rates", None)
    fee_rates = None
    if fees_raw is not None:
        fees = section.section("fee_rates")
        fee_rates = FeeRates(maker=fees.decimal("maker"), taker=fees.decimal("taker"))
        fees.done()
        for role in ("maker", "taker"):
            if getattr(fee_rates, role) >= 1:
                raise ConfigError(f"{fees.key(role)}: fee rates must be below 1")
    spec = AccountSpec(
        name=section.text("name"),
        user_id=section.integer("user_id", minimum=1),
        token=section.text("token"),
        balances=balances,
        fee_rates=fee_rates,
    )
    section.done()
    return spec


def _check_unique(accounts: tuple[AccountSpec, ...]) -> None:
    for attribute in ("name", "user_id", "token"):
        values = [getattr(account, attribute) for account in accounts]
        if len(values) != len(set(values)):
            raise ConfigError(f"accounts: duplicate account {attribute}")


def _ws(section: MappingReader) -> WsSettings:
    limits = section.raw("depth_limits", list(DEFAULT_DEPTH_LIMITS))
    intervals = section.raw("depth_intervals", list(DEFAULT_DEPTH_INTERVALS))
    if not isinstance(limits, list) or not all(isinstance(v, int) and v > 0 for v in limits):
        raise ConfigError(f"{section.key('depth_limits')}: expected a list of positive integers")
    if not isinstance(intervals, list) or not all(
        isinstance(v, str) and parse_decimal(v) is not None for v in intervals
    ):
        raise ConfigError(f"{section.key('depth_intervals')}: expected a list of decimal strings")
    settings = WsSettings(
        keep_alive=section.number("keep_alive", 3600.0),
        max_message_size=section.integer("max_message_size", 102400, minimum=1),
        unknown_method_error=section.flag("unknown_method_error", False),
        depth_limits=tuple(limits),
        depth_intervals=tuple(intervals),
        full_snapshot_every=section.number("full_snapshot_every", 60.0),
    )
    section.done()
    return settings
