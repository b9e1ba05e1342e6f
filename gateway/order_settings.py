"""The order desk's settings: rate limits, pacing, risk limits, idempotency, ownership, kill switch.

Read from the ``orders`` section of the settings file; a user's own ``limits`` and ``risk`` in the
users file override the defaults (``gateway.auth.users`` calls the same readers). Pure data and
validation, like ``gateway.settings``; every key is documented in ``config/gateway.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from gateway.core.mapping_reader import ConfigError, MappingReader


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """At most ``count`` calls in any ``window`` seconds."""

    count: int
    window: float


@dataclass(frozen=True, slots=True)
class UserLimits:
    place: RatePolicy = RatePolicy(10, 1.0)
    cancel: RatePolicy = RatePolicy(20, 1.0)
    read: RatePolicy = RatePolicy(50, 1.0)
    market_data: RatePolicy = RatePolicy(200, 1.0)


@dataclass(frozen=True, slots=True)
class AccountLimits:
    place: RatePolicy = RatePolicy(50, 1.0)
    cancel: RatePolicy = RatePolicy(100, 1.0)


@dataclass(frozen=True, slots=True)
class PacingSettings:
    """Calls per second each replica lets through to one upstream account, queueing the excess."""

    rate: float = 40.0
    burst: int = 10
    max_wait: float = 1.0


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """Per user and market; ``None`` turns a check off."""

    max_order_amount: Decimal | None = None
    max_notional: Decimal | None = None
    price_band_percent: Decimal | None = None


@dataclass(frozen=True, slots=True)
class RiskRules:
    """A default policy and per-market replacements of some of its fields."""

    default: RiskPolicy = RiskPolicy()
    markets: Mapping[str, RiskPolicy] = field(default_factory=dict)

    def for_market(self, market: str) -> RiskPolicy:
        return self.markets.get(market, self.default)


@dataclass(frozen=True, slots=True)
class IdempotencySettings:
    ttl: float = 86_400.0
    wait: float = 15.0
    # An in-flight claim holds this long unless renewed; renewed every third of it while the
    # claimant waits, so only a dead (or cut-off) replica lets it lapse.
    lease: float = 15.0


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    interval: float = 1.0  # seconds between rounds
    max_tries: int = 10  # rounds that cannot decide a call before it is "unresolved"
    window: float = 15.0  # seconds after its intent an order may still appear on the exchange
    skew: float = 2.0  # seconds the exchange's clock may be behind ours


@dataclass(frozen=True, slots=True)
class KillSwitchSettings:
    state_file: Path | None = None
    sync_interval: float = 0.25


@dataclass(frozen=True, slots=True)
class OrderSettings:
    limits: UserLimits = UserLimits()
    account_limits: AccountLimits = AccountLimits()
    pacing: PacingSettings = PacingSettings()
    risk: RiskRules = field(default_factory=RiskRules)
    idempotency: IdempotencySettings = IdempotencySettings()
    ownership_ttl: float = 90 * 86_400.0
    finished_scan_limit: int = 10_000
    kill_switch: KillSwitchSettings = KillSwitchSettings()
    reconcile: ReconcileSettings = ReconcileSettings()


def parse_orders(section: MappingReader) -> OrderSettings:
    idempotency = section.section("idempotency", {})
    kill_switch = section.section("kill_switch", {})
    reconcile = section.section("reconcile", {})
    settings = OrderSettings(
        limits=parse_user_limits(section.section("limits", {}), UserLimits()),
        account_limits=_account_limits(section.section("account_limits", {})),
        pacing=_pacing(section.section("pacing", {})),
        risk=parse_risk(section.section("risk", {}), RiskRules()),
        idempotency=IdempotencySettings(ttl=idempotency.number("ttl", 86_400.0),
                                        wait=idempotency.number("wait", 15.0),
                                        lease=idempotency.number("lease", 15.0)),
        ownership_ttl=section.number("ownership_ttl", 90 * 86_400.0),
        finished_scan_limit=section.integer("finished_scan_limit", 10_000, minimum=100),
        kill_switch=KillSwitchSettings(
            state_file=_optional_path(kill_switch, "state_file"),
            sync_interval=kill_switch.number("sync_interval", 0.25)),
        reconcile=ReconcileSettings(
            interval=reconcile.number("interval", 1.0),
            max_tries=reconcile.integer("max_tries", 10, minimum=1),
            window=reconcile.number("window", 15.0),
            skew=reconcile.number("skew", 2.0, allow_zero=True)),
    )
    for reader in (idempotency, kill_switch, reconcile, section):
        reader.done()
    if settings.kill_switch.sync_interval > 0.5:
        raise ConfigError(f"{kill_switch.key('sync_interval')}: at most 0.5 (a switch must reach "
                          "every replica within one second)")
    return settings


def parse_user_limits(section: MappingReader, base: UserLimits) -> UserLimits:
    """``base`` with the policies ``section`` names replaced."""
    limits = replace(base, **{
        name: _rate(section.section(name)) for name in ("place", "cancel", "read", "market_data")
        if name in section.names()})
    section.done()
    return limits


def parse_risk(section: MappingReader, base: RiskRules) -> RiskRules:
    """``base`` overlaid with ``section``: ``default`` fields, then per-market fields."""
    default = _risk_policy(section.section("default", {}), base.default)
    markets = dict(base.markets)
    markets_section = section.section("markets", {})
    for market in markets_section.names():
        start = markets.get(market, default)
        markets[market] = _risk_policy(markets_section.section(market), start)
    markets_section.done()
    section.done()
    return RiskRules(default=default, markets=markets)


def _risk_policy(section: MappingReader, base: RiskPolicy) -> RiskPolicy:
    values = {name: _positive_decimal(section, name)
              for name in ("max_order_amount", "max_notional", "price_band_percent")
              if name in section.names()}
    section.done()
    return replace(base, **values)


def _positive_decimal(section: MappingReader, name: str) -> Decimal | None:
    if section.raw(name) is None:
        return None
    value = section.decimal(name)
    if value <= 0:
        raise ConfigError(f"{section.key(name)}: expected a positive decimal string or null")
    return value


def _rate(section: MappingReader) -> RatePolicy:
    policy = RatePolicy(count=section.integer("count", minimum=1),
                        window=section.number("window", 1.0))
    section.done()
    return policy


def _account_limits(section: MappingReader) -> AccountLimits:
    base = AccountLimits()
    limits = AccountLimits(
        place=_rate(section.section("place")) if "place" in section.names() else base.place,
        cancel=_rate(section.section("cancel")) if "cancel" in section.names() else base.cancel,
    )
    section.done()
    return limits


def _pacing(section: MappingReader) -> PacingSettings:
    settings = PacingSettings(
        rate=section.number("rate", 40.0, allow_zero=True),
        burst=section.integer("burst", 10, minimum=1),
        max_wait=section.number("max_wait", 1.0, allow_zero=True),
    )
    section.done()
    return settings


def _optional_path(section: MappingReader, name: str) -> Path | None:
    value = section.raw(name, None)
    if value in (None, ""):
        return None
    return Path(section.text(name))
