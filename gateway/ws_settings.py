"""Settings of the WebSocket fan-out: the downstream limits and the upstream subscriptions.

Read from the ``ws`` section of the settings file; every key is documented in
``config/gateway.yaml``. Pure data and validation, like ``gateway.settings``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.mapping_reader import ConfigError, MappingReader

# Expie's widest depth subscription: one upstream book per market at this many levels.
UPSTREAM_DEPTH_LIMITS = (1, 5, 10, 20, 30, 50, 100)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """One upstream subscription per stream across the replicas sharing ``redis.url``."""

    enabled: bool = True
    # A leader that stops renewing (killed, cut off) loses its streams this long after.
    lease_ttl: float = 3.0
    # Leaders renew, followers try to take over and every replica refreshes its presence.
    renew_interval: float = 0.75


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    # The exchange's WebSocket URL; empty: upstream.base_url with a ws scheme and /ws.
    upstream_url: str | None = None
    auth_grace: float = 5.0
    max_connections_per_user: int = 20
    max_markets_per_connection: int = 20
    max_messages_per_second: int = 20
    max_frame_bytes: int = 16_384
    queue_limit: int = 512
    linger: float = 30.0
    heartbeat: float = 10.0
    upstream_depth_limit: int = 100
    full_snapshot_every: float = 60.0
    token_check_interval: float = 1.0
    # Each live book is checked against the exchange's depth.query this often.
    verify_interval: float = 5.0
    # A second mismatch this long after the first resyncs the book (longer than the exchange's
    # depth.query cache, up to 10 s, so a cached answer alone never triggers it).
    verify_confirm_after: float = 12.0
    # A live book unconfirmed for longer is not served as fresh: REST goes to the cache path.
    max_book_age: float = 15.0
    cluster: ClusterSettings = ClusterSettings()


def parse_ws(section: MappingReader) -> WebSocketSettings:
    url = section.raw("upstream_url", "")
    settings = WebSocketSettings(
        upstream_url=section.text("upstream_url") if url else None,
        auth_grace=section.number("auth_grace", 5.0),
        max_connections_per_user=section.integer("max_connections_per_user", 20, minimum=1),
        max_markets_per_connection=section.integer("max_markets_per_connection", 20, minimum=1),
        max_messages_per_second=section.integer("max_messages_per_second", 20, minimum=1),
        max_frame_bytes=section.integer("max_frame_bytes", 16_384, minimum=256),
        queue_limit=section.integer("queue_limit", 512, minimum=16),
        linger=section.number("linger", 30.0, allow_zero=True),
        heartbeat=section.number("heartbeat", 10.0),
        upstream_depth_limit=section.integer("upstream_depth_limit", 100, minimum=1),
        full_snapshot_every=section.number("full_snapshot_every", 60.0),
        token_check_interval=section.number("token_check_interval", 1.0),
        verify_interval=section.number("verify_interval", 5.0),
        verify_confirm_after=section.number("verify_confirm_after", 12.0),
        max_book_age=section.number("max_book_age", 15.0),
        cluster=_cluster(section.section("cluster", {})),
    )
    section.done()
    if settings.upstream_url is not None and not settings.upstream_url.startswith(
            ("ws://", "wss://")):
        raise ConfigError(f"{section.key('upstream_url')}: expected a ws:// or wss:// URL")
    if settings.upstream_depth_limit not in UPSTREAM_DEPTH_LIMITS:
        raise ConfigError(f"{section.key('upstream_depth_limit')}: expected one of "
                          f"{', '.join(map(str, UPSTREAM_DEPTH_LIMITS))} (Expie's depth limits)")
    if settings.max_book_age <= settings.verify_interval:
        # A quiet market is confirmed by verification alone: it would never be served live.
        raise ConfigError(f"{section.key('max_book_age')}: expected more than "
                          f"{section.key('verify_interval')} ({settings.verify_interval:g})")
    return settings


def _cluster(section: MappingReader) -> ClusterSettings:
    settings = ClusterSettings(
        enabled=section.flag("enabled", True),
        lease_ttl=section.number("lease_ttl", 3.0),
        renew_interval=section.number("renew_interval", 0.75),
    )
    section.done()
    if settings.renew_interval * 2 > settings.lease_ttl:
        # Two renewals per lease at least: one slow Redis reply must not cost the leadership.
        raise ConfigError(f"{section.key('renew_interval')}: expected at most half of "
                          f"{section.key('lease_ttl')} ({settings.lease_ttl:g})")
    return settings


def upstream_ws_url(settings: WebSocketSettings, base_url: str) -> str:
    """The exchange's WebSocket URL: the setting, or the REST root with a ws scheme and /ws."""
    if settings.upstream_url:
        return settings.upstream_url
    scheme, _, rest = base_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/ws"
