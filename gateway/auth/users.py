"""The user directory: who may get a gateway token, with which scopes, markets and account.

Users come from a YAML file (``config/users.example.yaml`` shows the format). A user holds a
client secret *hash*, never the secret. Pure data plus the loader; no aiohttp.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.auth.passwords import is_valid_hash
from gateway.core.mapping_reader import ConfigError, MappingReader
from gateway.core.principal import Scope
from gateway.order_settings import (
    OrderSettings,
    RiskRules,
    UserLimits,
    parse_risk,
    parse_user_limits,
)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    scopes: frozenset[Scope]
    # None means every market.
    markets: frozenset[str] | None
    account: str
    secret_hash: str | None = field(default=None, repr=False)
    limits: UserLimits = field(default_factory=UserLimits)
    risk: RiskRules = field(default_factory=RiskRules)


class UserDirectory:
    def __init__(self, users: Iterable[User]) -> None:
        self._users = {user.id: user for user in users}

    def get(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    def all(self) -> list[User]:
        return sorted(self._users.values(), key=lambda user: user.id)


def load_users(
    path: Path, accounts: Collection[str], orders: OrderSettings | None = None
) -> UserDirectory:
    """Users from ``path``; each must trade for one of ``accounts``. A user's ``limits`` and
    ``risk`` override the defaults of ``orders``."""
    defaults = orders or OrderSettings()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read users file {path}: {exc}") from exc
    root = MappingReader(data, str(path))
    users = [_user(section, accounts, defaults)
             for _, section in root.items("users", [], allow_empty=True)]
    root.done()
    ids = [user.id for user in users]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{path}: duplicate user id")
    return UserDirectory(users)


def _user(section: MappingReader, accounts: Collection[str], orders: OrderSettings) -> User:
    scopes = section.text_list("scopes")
    unknown = sorted(set(scopes) - {scope.value for scope in Scope})
    if unknown:
        raise ConfigError(f"{section.key('scopes')}: unknown scope {unknown[0]!r}")
    markets_value = section.raw("markets", "all")
    markets = None if markets_value == "all" else frozenset(section.text_list("markets"))
    user = User(
        id=section.text("id"),
        name=section.text("name"),
        secret_hash=section.optional_text("secret_hash"),
        scopes=frozenset(Scope(scope) for scope in scopes),
        markets=markets,
        account=section.text("account"),
        limits=parse_user_limits(section.section("limits", {}), orders.limits),
        risk=parse_risk(section.section("risk", {}), orders.risk),
    )
    section.done()
    if user.secret_hash is not None and not is_valid_hash(user.secret_hash):
        raise ConfigError(f"{section.key('secret_hash')}: not a hash made by "
                          "`expie-gateway users hash-secret`")
    if user.account not in accounts:
        raise ConfigError(f"{section.key('account')}: no upstream account {user.account!r}")
    return user
