"""Opening the gateway's port: the error when it cannot be had, and a check before any worker.

Kept apart from ``gateway.server`` so the supervisor of ``serve --workers N`` can check the port
without importing the web stack.
"""

from __future__ import annotations

import errno
import socket

from gateway.errors import GatewayError


class ListenFailed(GatewayError):
    """The listening socket could not be opened (the address is in use, or not this host's)."""

    code = "listen_failed"


def listen_failed(host: str, port: int, exc: OSError) -> ListenFailed:
    """The one clear message for ``exc`` raised while opening ``host:port``."""
    reason = "the address is in use" if exc.errno == errno.EADDRINUSE else (
        exc.strerror or str(exc))
    return ListenFailed(f"cannot listen on {host}:{port}: {reason}")


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` as the server would (every address it resolves to), then let it go.

    Without ``SO_REUSEPORT``: a port another process listens on, with or without it, is refused.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise listen_failed(host, port, exc) from None
