"""``expie-gateway``: serve, check-config, token, users, keys, audit and demo.

Settings come from ``--config`` (default: ``$EXPIE_GW_CONFIG`` or ``config/gateway.yaml``) plus
``EXPIE_GW_*`` overrides. A configuration error exits with status 2 and a message naming the key.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.audit_cli import AUDIT_HANDLERS, add_audit_commands
from gateway.auth.authenticator import user_cutoff
from gateway.auth.credentials import load_account_tokens, load_keyring, redis_password
from gateway.auth.passwords import generate_client_secret, hash_secret
from gateway.auth.signing import (
    Algorithm,
    SigningKeyError,
    generate_signing_key,
    private_pem,
)
from gateway.auth.tokens import TokenIssuer
from gateway.auth.users import UserDirectory, load_users
from gateway.core.mapping_reader import ConfigError
from gateway.core.principal import Scope, format_scopes
from gateway.core.wire import wire_integer
from gateway.errors import GatewayError
from gateway.logs import configure_logging
from gateway.settings import CONFIG_PATH_VARIABLE, MAX_WORKERS, Settings, load_settings
from gateway.stores.redis_client import connect_redis
from gateway.stores.revocation import RedisRevocationStore

CONFIG_ERROR = 2
DEFAULT_CONFIG = Path("config/gateway.yaml")
DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(ValueError):
    """A command-line value is wrong; the message says which."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expie-gateway",
        description="Authenticated REST + WebSocket gateway in front of the Expie exchange API.")
    parser.add_argument("--version", action="version", version=f"expie-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_command = _with_config(commands.add_parser("serve", help="run the gateway"))
    serve_command.add_argument(
        "--workers", type=worker_count, default=None, metavar="N",
        help=f"processes on the one port, 1-{MAX_WORKERS} (default server.workers); above 1 "
        "needs redis.url")
    # A worker of a supervisor (serve --workers N): SO_REUSEPORT, no supervision of its own.
    serve_command.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    _with_config(commands.add_parser("check-config", help="validate the settings and exit"))
    demo = commands.add_parser("demo", help="run the simulator and the gateway together")
    demo.add_argument("--port", type=port_number, default=8080, help="gateway port (loopback)")
    demo.add_argument("--sim-port", type=port_number, default=8081,
                      help="simulator port (loopback)")
    _token_commands(commands.add_parser("token", help="issue or revoke gateway tokens"))
    _user_commands(commands.add_parser("users", help="list users, hash client secrets"))
    keys = commands.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    generate = keys.add_parser("generate", help="write a new private key (PEM) to a file")
    generate.add_argument("--kid", required=True)
    generate.add_argument("--algorithm", default="EdDSA", choices=[a.value for a in Algorithm])
    generate.add_argument("--out", type=Path, required=True)
    add_audit_commands(commands, _with_config)
    return parser


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    default = Path(os.environ.get(CONFIG_PATH_VARIABLE, DEFAULT_CONFIG))
    parser.add_argument("--config", type=Path, default=default, help=f"(default {default})")
    return parser


def _token_commands(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = _with_config(actions.add_parser("issue", help="print a token for a user"))
    issue.add_argument("--user", required=True)
    issue.add_argument("--ttl", default=None, help="lifetime: 900, 15m, 2h, 1d")
    issue.add_argument("--scope", action="append", default=None,
                       help="a scope to grant (repeatable; default: all of the user's)")
    revoke = _with_config(actions.add_parser(
        "revoke", help="revoke a token id, or every token of a user (needs Redis)"))
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti")
    target.add_argument("--user")


def _user_commands(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _with_config(actions.add_parser("list", help="list the configured users"))
    hashing = actions.add_parser(
        "hash-secret", help="hash a client secret for the users file (reads it from stdin, or "
        "generates one with --generate)")
    hashing.add_argument("--generate", action="store_true", help="make a new random secret")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = HANDLERS[(args.command, getattr(args, "action", None))]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"expie-gateway: configuration error: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    except (UsageError, GatewayError) as exc:
        print(f"expie-gateway: {exc}", file=sys.stderr)
        return 1


def read_settings(path: Path) -> Settings:
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    return load_settings(path)


def serve(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if args.workers is not None:
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, workers=args.workers))
    configure_logging(settings.logging, worker=args.worker_of is not None)
    if args.worker_of is None and settings.server.workers > 1:
        from gateway.supervisor import supervise  # noqa: PLC0415 - the supervisor has no web stack

        return supervise(settings, args.config)
    from gateway.server import run_gateway  # noqa: PLC0415 - keeps the web stack out of other commands

    run_gateway(settings, worker_of=args.worker_of)
    return 0


def check_config(args: argparse.Namespace) -> int:
    from gateway.supervisor import refuse_unshared  # noqa: PLC0415 - as serve does, only here

    settings = read_settings(args.config)
    refuse_unshared(settings)
    tokens = load_account_tokens(settings.accounts)
    load_keyring(settings.auth)
    directory = load_users(settings.users_file, tokens.keys(), settings.orders)
    print(f"{args.config}: ok ({len(settings.accounts)} accounts, {len(directory.all())} users, "
          f"{len(settings.auth.keys)} keys, redis {'on' if settings.redis.url else 'off'})")
    return 0


def issue_token(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    directory = _directory(settings)
    user = directory.get(args.user)
    if user is None:
        raise UsageError(f"--user: no user {args.user!r}")
    ttl = parse_duration(args.ttl) if args.ttl else settings.auth.token_ttl
    if ttl > settings.auth.max_token_ttl:
        raise UsageError(
            f"--ttl: longer than auth.max_token_ttl ({settings.auth.max_token_ttl:g} s)")
    scopes = _requested_scopes(args.scope, user.scopes)
    issuer = TokenIssuer(load_keyring(settings.auth), settings.auth.issuer,
                         settings.auth.audience, time.time)
    token, claims = issuer.issue(user.id, [scope.value for scope in scopes], ttl)
    print(token)
    print(f"user {user.id}, scope {format_scopes(scopes)}, jti {claims.token_id}, "
          f"expires in {int(ttl)} s", file=sys.stderr)
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if not settings.redis.url:
        raise UsageError("revocation from the command line needs redis.url: without Redis, "
                         "call POST /admin/tokens/revoke on the running gateway")
    asyncio.run(revoke_in_redis(settings, jti=args.jti, user=args.user))
    print(f"revoked {'token ' + args.jti if args.jti else 'every token of user ' + args.user}")
    return 0


async def revoke_in_redis(settings: Settings, *, jti: str | None, user: str | None) -> None:
    """Write the revocation where every replica reads it; they refuse it within a second."""
    assert settings.redis.url is not None
    client = connect_redis(settings.redis.url, password=redis_password(settings.redis))
    store = RedisRevocationStore(client, settings.redis.key_prefix)
    now = time.time()
    keep_until = now + settings.auth.max_token_ttl + settings.auth.leeway
    try:
        if jti is not None:
            await store.revoke_token(jti, expires_at=keep_until)
        elif user is not None:
            await store.revoke_user(user, before=user_cutoff(now), keep_until=keep_until)
    finally:
        await client.aclose()


def list_users(args: argparse.Namespace) -> int:
    directory = _directory(read_settings(args.config))
    for user in directory.all():
        markets = "all" if user.markets is None else ",".join(sorted(user.markets))
        print(f"{user.id}\t{user.name}\taccount={user.account}\tscopes={format_scopes(user.scopes)}"
              f"\tmarkets={markets}\tsecret={'yes' if user.secret_hash else 'no'}")
    return 0


def hash_client_secret(args: argparse.Namespace) -> int:
    if args.generate:
        secret = generate_client_secret()
        print(f"client secret (give it to the client once): {secret}", file=sys.stderr)
    elif sys.stdin.isatty():
        secret = getpass.getpass("client secret: ")
    else:
        secret = sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        raise UsageError("the client secret must be at least 16 characters")
    print(hash_secret(secret))
    return 0


def generate_key(args: argparse.Namespace) -> int:
    try:
        key = generate_signing_key(args.kid, args.algorithm)
    except SigningKeyError as exc:
        raise UsageError(f"--kid: {exc}") from None
    try:
        descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out: {args.out} exists; not overwriting a key") from None
    except OSError as exc:
        raise UsageError(f"--out: cannot create {args.out}: {exc.strerror}") from None
    with os.fdopen(descriptor, "wb") as out:
        out.write(private_pem(key))
    print(f"wrote {args.algorithm} key {args.kid} to {args.out}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo as demo  # noqa: PLC0415 - the one place the simulator is used

    demo(gateway_port=args.port, simulator_port=args.sim_port)
    return 0


def port_number(text: str) -> int:
    if (port := wire_integer(text, 65535)) is None or port == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return port


def worker_count(text: str) -> int:
    if (count := wire_integer(text, MAX_WORKERS)) is None or count == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_WORKERS}")
    return count


def parse_duration(text: str) -> float:
    match = DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise UsageError(f"--ttl: {text!r} is not a duration like 900, 15m, 2h or 1d")
    return float(int(match.group(1)) * UNITS[match.group(2)])


def _directory(settings: Settings) -> UserDirectory:
    return load_users(settings.users_file, [account.name for account in settings.accounts],
                      settings.orders)


def _requested_scopes(requested: list[str] | None, held: frozenset[Scope]) -> frozenset[Scope]:
    if not requested:
        return held
    names = {name for item in requested for name in item.replace(",", " ").split()}
    unknown = sorted(names - {scope.value for scope in Scope})
    if unknown:
        raise UsageError(f"--scope: unknown scope {unknown[0]!r}")
    wanted = frozenset(Scope(name) for name in names)
    if not wanted <= held:
        raise UsageError(f"--scope: the user does not hold {sorted(wanted - held)[0]}")
    return wanted


HANDLERS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("serve", None): serve,
    ("check-config", None): check_config,
    ("demo", None): run_demo,
    ("token", "issue"): issue_token,
    ("token", "revoke"): revoke_token,
    ("users", "list"): list_users,
    ("users", "hash-secret"): hash_client_secret,
    ("keys", "generate"): generate_key,
    **AUDIT_HANDLERS,
}


if __name__ == "__main__":
    sys.exit(main())
