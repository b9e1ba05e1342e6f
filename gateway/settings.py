"""The gateway's settings: one YAML file plus ``EXPIE_GW_<SECTION>__<KEY>`` environment overrides.

Everything is validated at load time: an unknown key or a bad value raises ``ConfigError`` naming
it (the CLI exits 2). Secrets are *referenced* here (an environment variable or a file path, as
Kubernetes mounts Secrets) and read by ``gateway.auth.credentials``; no secret value is held here.
Every key is documented in ``config/gateway.yaml``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.core.backoff import BackoffPolicy
from gateway.core.forwarded import Network
from gateway.core.mapping_reader import ConfigError, MappingReader
from gateway.order_settings import OrderSettings, parse_orders
from gateway.ws_settings import WebSocketSettings, parse_ws

ENV_PREFIX = "EXPIE_GW_"
# Names the settings file (see ``gateway.cli``); it is not a settings key.
CONFIG_PATH_VARIABLE = "EXPIE_GW_CONFIG"
MAX_WORKERS = 64  # server.workers: processes of one ``serve`` (see gateway.supervisor)
ALGORITHMS = ("EdDSA", "RS256", "ES256")


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file. Never the value."""

    env: str | None = None
    file: Path | None = None


# Every interface, as a container must listen; the demo and the tests pass loopback.
ANY_ADDRESS = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where the gateway listens and how it leaves: see ``gateway.server`` for the drain."""

    host: str = ANY_ADDRESS
    port: int = 8080
    workers: int = 1
    drain_delay: float = 5.0
    shutdown_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    public_url: str | None = None
    trusted_proxies: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    base_url: str = "http://127.0.0.1:8081"
    connect_timeout: float = 2.0
    total_timeout: float = 10.0
    max_connections: int = 100
    retries: int = 2
    retry_backoff: float = 0.05
    breaker_failures: int = 5
    breaker_cooldown: float = 5.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Seconds each market-data endpoint stays fresh, and how the cache behaves around that."""

    markets_ttl: float = 60.0
    ticker_ttl: float = 1.0
    depth_ttl: float = 1.0
    local_ttl: float = 0.25
    stale_if_error: float = 60.0
    fill_lock: float = 5.0
    fill_wait: float = 2.0


@dataclass(frozen=True, slots=True)
class KeySettings:
    kid: str
    algorithm: str
    private_key: SecretRef | None
    public_key: SecretRef | None


@dataclass(frozen=True, slots=True)
class ExternalIssuerSettings:
    issuer: str
    jwks_url: str
    user_claim: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_ttl: float


@dataclass(frozen=True, slots=True)
class SignInSettings:
    """``POST /auth/token``: the backoff after failed attempts and the bound on secret checks."""

    free_failures: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0
    forget_after: float = 900.0
    secret_checks: int = 2
    secret_check_wait: float = 1.0

    @property
    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(self.free_failures, self.base_delay, self.max_delay,
                             self.forget_after)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    issuer: str = "expie-gateway"
    audience: str = "expie-gateway"
    token_ttl: float = 900.0
    max_token_ttl: float = 86400.0
    leeway: float = 5.0
    verify_cache_size: int = 10_000
    signing_key: str | None = None
    keys: tuple[KeySettings, ...] = ()
    external_issuers: tuple[ExternalIssuerSettings, ...] = ()
    sign_in: SignInSettings = SignInSettings()


@dataclass(frozen=True, slots=True)
class AccountSettings:
    name: str
    token: SecretRef


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None = None
    password: SecretRef | None = None
    key_prefix: str = "expie-gw:"
    max_connections: int = 64
    revocation_sync_interval: float = 0.25
    # Refuse to start on a Redis that keeps nothing on disk: its restart would lose the audit
    # chain, idempotency keys and order owners (``gateway.stores.redis_persistence``).
    require_persistence: bool = True
    # How often each replica compares the cluster epoch and the chain head in Redis with what it
    # saw (``gateway.services.state_watch``): a loss stops order calls within this.
    state_check_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the audit trail lives. ``backend`` ``auto`` is Redis when ``redis.url`` is set."""

    backend: str = "auto"
    file: Path = Path("var/audit.jsonl")
    fsync: bool = True
    retention_days: float = 0.0
    spool_limit: int = 100_000
    spool_retry_interval: float = 0.5
    # Outside Redis on purpose: the last exported record, which ``audit verify`` holds the chain
    # to, so a chain that restarted cannot pass for the one exported.
    checkpoint_file: Path = Path("var/audit-checkpoint.json")


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    # json: one JSON object per line, what log collectors parse; text: for a terminal (the demo).
    format: str = "json"
    # Share of market-data calls that get an access-log line (order and admin calls: every one).
    access_sample: float = 0.01


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    cache: CacheSettings = CacheSettings()
    auth: AuthSettings = AuthSettings()
    users_file: Path = Path("config/users.example.yaml")
    accounts: tuple[AccountSettings, ...] = ()
    redis: RedisSettings = RedisSettings()
    audit: AuditSettings = AuditSettings()
    orders: OrderSettings = field(default_factory=OrderSettings)
    ws: WebSocketSettings = field(default_factory=WebSocketSettings)
    logging: LoggingSettings = LoggingSettings()

    @property
    def audit_in_redis(self) -> bool:
        return self.audit.backend == "redis" or (
            self.audit.backend == "auto" and self.redis.url is not None)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path`` (or defaults) with ``EXPIE_GW_*`` overrides from ``environ``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded or {}
    overrides = apply_environment(data, os.environ if environ is None else environ)
    try:
        return parse_settings(data)
    except ConfigError as exc:
        variable = _override_of(exc, overrides)
        if variable is None:
            raise
        raise ConfigError(f"{exc} (set by {variable})") from exc


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """``EXPIE_GW_AUTH__LEEWAY=2`` sets ``auth.leeway``; values are YAML (``[a, b]`` is a list,
    but ``expie-gw:`` is the string, not a block mapping).

    Returns the keys it set (``auth.leeway``) with the variable that set each.
    """
    overrides: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_VARIABLE:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: malformed override name")
        value = _override_value(name, environ[name])
        target = data
        for part in path[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{name}: {part} is not a section")
            target = nested
        target[path[-1]] = value
        overrides[".".join(path)] = name
    return overrides


def _override_value(name: str, text: str) -> object:
    """``text`` as YAML; a list or mapping only in flow style, so ``expie-gw:`` stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not a YAML value") from exc
    if isinstance(value, dict | list) and not text.lstrip().startswith(("[", "{")):
        return text
    return value


def _override_of(exc: ConfigError, overrides: Mapping[str, str]) -> str | None:
    """The environment variable that set the key ``exc`` names, if one did."""
    key = str(exc).partition(":")[0]
    for path, name in overrides.items():
        if key == path or key.startswith((f"{path}.", f"{path}[")):
            return name
    return None


def parse_settings(data: object) -> Settings:
    """Relative file paths in settings are taken from the working directory, as given."""
    root = MappingReader(data, "")
    settings = Settings(
        server=_server(root.section("server", {})),
        upstream=_upstream(root.section("upstream", {})),
        cache=_cache(root.section("cache", {})),
        auth=_auth(root.section("auth", {})),
        users_file=_path(root.section("users", {}), "file", "config/users.example.yaml"),
        accounts=tuple(_account(s) for _, s in root.items("accounts", [], allow_empty=True)),
        redis=_redis(root.section("redis", {})),
        audit=_audit(root.section("audit", {})),
        orders=parse_orders(root.section("orders", {})),
        ws=parse_ws(root.section("ws", {})),
        logging=_logging(root.section("logging", {})),
    )
    root.done()
    names = [account.name for account in settings.accounts]
    if len(names) != len(set(names)):
        raise ConfigError("accounts: duplicate account name")
    if settings.audit.backend == "redis" and settings.redis.url is None:
        raise ConfigError("audit.backend: redis needs redis.url")
    return settings


def _server(section: MappingReader) -> ServerSettings:
    settings = ServerSettings(
        host=section.text("host", ANY_ADDRESS),
        port=section.integer("port", 8080, minimum=1, maximum=65535),
        workers=section.integer("workers", 1, minimum=1, maximum=MAX_WORKERS),
        drain_delay=section.number("drain_delay", 5.0, allow_zero=True),
        shutdown_timeout=section.number("shutdown_timeout", 10.0),
        header_timeout=section.number("header_timeout", 10.0),
        body_timeout=section.number("body_timeout", 10.0),
        public_url=_public_url(section),
        trusted_proxies=_networks(section, "trusted_proxies"),
    )
    section.done()
    return settings


def _public_url(section: MappingReader) -> str | None:
    url = section.optional_text("public_url") if section.raw("public_url", None) != "" else None
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{section.key('public_url')}: expected an http:// or https:// URL")
    return url.rstrip("/") if url else None


def _networks(section: MappingReader, name: str) -> tuple[Network, ...]:
    networks = []
    for text in section.text_list(name, []):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(f"{section.key(name)}: {text!r} is not an address or a CIDR "
                              "range") from None
    return tuple(networks)


def _upstream(section: MappingReader) -> UpstreamSettings:
    base_url = section.text("base_url", "http://127.0.0.1:8081").rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{section.key('base_url')}: expected an http:// or https:// URL")
    settings = UpstreamSettings(
        base_url=base_url,
        connect_timeout=section.number("connect_timeout", 2.0),
        total_timeout=section.number("total_timeout", 10.0),
        max_connections=section.integer("max_connections", 100, minimum=1),
        retries=section.integer("retries", 2, maximum=10),
        retry_backoff=section.number("retry_backoff", 0.05),
        breaker_failures=section.integer("breaker_failures", 5, minimum=1),
        breaker_cooldown=section.number("breaker_cooldown", 5.0),
    )
    section.done()
    return settings


def _cache(section: MappingReader) -> CacheSettings:
    settings = CacheSettings(
        markets_ttl=section.number("markets_ttl", 60.0),
        ticker_ttl=section.number("ticker_ttl", 1.0),
        depth_ttl=section.number("depth_ttl", 1.0),
        local_ttl=section.number("local_ttl", 0.25),
        stale_if_error=section.number("stale_if_error", 60.0, allow_zero=True),
        fill_lock=section.number("fill_lock", 5.0),
        fill_wait=section.number("fill_wait", 2.0),
    )
    section.done()
    if settings.local_ttl >= 1:
        raise ConfigError(f"{section.key('local_ttl')}: the in-process level must stay under 1 s")
    return settings


def _auth(section: MappingReader) -> AuthSettings:
    keys = tuple(_key(s) for _, s in section.items("keys", [], allow_empty=True))
    signing = section.optional_text("signing_key")
    settings = AuthSettings(
        issuer=section.text("issuer", "expie-gateway"),
        audience=section.text("audience", "expie-gateway"),
        token_ttl=section.number("token_ttl", 900.0),
        max_token_ttl=section.number("max_token_ttl", 86400.0),
        leeway=section.number("leeway", 5.0, allow_zero=True),
        verify_cache_size=section.integer("verify_cache_size", 10_000),
        signing_key=signing,
        keys=keys,
        external_issuers=tuple(
            _external(s) for _, s in section.items("external_issuers", [], allow_empty=True)),
        sign_in=_sign_in(section.section("sign_in", {})),
    )
    _check_keys(section, settings)
    section.done()
    return settings


def _sign_in(section: MappingReader) -> SignInSettings:
    settings = SignInSettings(
        free_failures=section.integer("free_failures", 3),
        base_delay=section.number("base_delay", 1.0),
        max_delay=section.number("max_delay", 300.0),
        forget_after=section.number("forget_after", 900.0),
        secret_checks=section.integer("secret_checks", 2, minimum=1, maximum=64),
        secret_check_wait=section.number("secret_check_wait", 1.0),
    )
    section.done()
    try:
        settings.backoff  # noqa: B018 - its checks are the settings' checks
    except ValueError as exc:
        raise ConfigError(f"{section.key('base_delay')}: {exc}") from None
    return settings


def _check_keys(section: MappingReader, settings: AuthSettings) -> None:
    kids = [key.kid for key in settings.keys]
    if len(kids) != len(set(kids)):
        raise ConfigError(f"{section.key('keys')}: duplicate kid")
    if settings.token_ttl > settings.max_token_ttl:
        raise ConfigError(f"{section.key('token_ttl')}: longer than max_token_ttl")
    if settings.signing_key is None:
        return
    signing = next((key for key in settings.keys if key.kid == settings.signing_key), None)
    if signing is None or signing.private_key is None:
        raise ConfigError(
            f"{section.key('signing_key')}: no key {settings.signing_key!r} with a private key")


def _key(section: MappingReader) -> KeySettings:
    algorithm = section.text("algorithm", "EdDSA")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{section.key('algorithm')}: expected one of {', '.join(ALGORITHMS)}")
    settings = KeySettings(
        kid=section.text("kid"),
        algorithm=algorithm,
        private_key=_secret_ref(section, "private_key"),
        public_key=_secret_ref(section, "public_key"),
    )
    section.done()
    if (settings.private_key is None) == (settings.public_key is None):
        raise ConfigError(f"{section.key('kid')}: give either a private or a public key")
    return settings


def _secret_ref(section: MappingReader, name: str) -> SecretRef | None:
    env = section.optional_text(f"{name}_env")
    file = section.optional_text(f"{name}_file")
    if env and file:
        raise ConfigError(f"{section.key(name + '_env')}: give an environment variable or a "
                          "file, not both")
    if env:
        return SecretRef(env=env)
    if file:
        return SecretRef(file=Path(file))
    return None


def _external(section: MappingReader) -> ExternalIssuerSettings:
    algorithms = section.text_list("algorithms", ["RS256", "ES256", "EdDSA"])
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"{section.key('algorithms')}: unsupported algorithm {algorithm!r}")
    settings = ExternalIssuerSettings(
        issuer=section.text("issuer"),
        jwks_url=section.text("jwks_url"),
        user_claim=section.text("user_claim", "sub"),
        audience=section.text("audience"),
        algorithms=algorithms,
        jwks_ttl=section.number("jwks_ttl", 300.0),
    )
    section.done()
    return settings


def _account(section: MappingReader) -> AccountSettings:
    token = _secret_ref(section, "token")
    name = section.text("name")
    section.done()
    if token is None:
        raise ConfigError(f"{section.key('token_env')}: account {name!r} needs token_env or "
                          "token_file")
    return AccountSettings(name=name, token=token)


def _redis(section: MappingReader) -> RedisSettings:
    url = section.optional_text("url") if section.raw("url", None) != "" else None
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{section.key('url')}: expected a redis:// URL")
    settings = RedisSettings(
        url=url,
        password=_secret_ref(section, "password"),
        key_prefix=section.text("key_prefix", "expie-gw:"),
        max_connections=section.integer("max_connections", 64, minimum=1),
        revocation_sync_interval=section.number("revocation_sync_interval", 0.25),
        require_persistence=section.flag("require_persistence", True),
        state_check_interval=section.number("state_check_interval", 0.5),
    )
    section.done()
    if settings.state_check_interval > 1:
        raise ConfigError(f"{section.key('state_check_interval')}: at most 1 s (a Redis that "
                          "lost its data must stop order calls within a second)")
    return settings


def _audit(section: MappingReader) -> AuditSettings:
    backend = section.text("backend", "auto")
    if backend not in ("auto", "file", "redis"):
        raise ConfigError(f"{section.key('backend')}: expected auto, file or redis")
    settings = AuditSettings(
        backend=backend,
        file=Path(section.text("file", "var/audit.jsonl")),
        fsync=section.flag("fsync", True),
        retention_days=section.number("retention_days", 0.0, allow_zero=True),
        spool_limit=section.integer("spool_limit", 100_000, minimum=1),
        spool_retry_interval=section.number("spool_retry_interval", 0.5),
        checkpoint_file=Path(section.text("checkpoint_file", "var/audit-checkpoint.json")),
    )
    section.done()
    return settings


def _path(section: MappingReader, name: str, default: str) -> Path:
    value = Path(section.text(name, default))
    section.done()
    return value


def _logging(section: MappingReader) -> LoggingSettings:
    level = section.text("level", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{section.key('level')}: expected DEBUG, INFO, WARNING or ERROR")
    log_format = section.text("format", "json")
    if log_format not in ("json", "text"):
        raise ConfigError(f"{section.key('format')}: expected json or text")
    sample = section.number("access_sample", 0.01, allow_zero=True)
    if sample > 1:
        raise ConfigError(f"{section.key('access_sample')}: expected a share from 0 to 1")
    section.done()
    return LoggingSettings(level, log_format, sample)
