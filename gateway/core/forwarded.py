"""The client's address behind reverse proxies (``Forwarded``, RFC 7239, or ``X-Forwarded-For``).

Those headers are believed only from the proxies the desk trusts (``server.trusted_proxies``):
anyone else could write any address into them. Walking the chain from the right, the first hop
that is not a trusted proxy is the client; a proxy that hid it (``unknown``, ``_hidden``) is
taken at its word. Pure: the caller passes the socket's peer and the two headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A chain longer than this is not a deployment's, it is an attempt to make every call costly.
MAX_HOPS = 32


def client_address(
    peer: str | None, forwarded: str | None, forwarded_for: str | None,
    trusted: tuple[Network, ...],
) -> str | None:
    """The address the audit records for a call that came from ``peer`` with those headers."""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = _forwarded_hops(forwarded) if forwarded else _list_hops(forwarded_for)
    client = peer
    for hop in reversed(hops[-MAX_HOPS:]):
        client = hop
        if not _is_trusted(hop, trusted):
            break
    return client


def _is_trusted(hop: str | None, trusted: tuple[Network, ...]) -> bool:
    address = _address(hop)
    return address is not None and any(address in network for network in trusted)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _list_hops(header: str | None) -> list[str]:
    """``X-Forwarded-For: client, proxy1, proxy2``."""
    if not header:
        return []
    return [_node(item) for item in header.split(",") if item.strip()]


def _forwarded_hops(header: str) -> list[str]:
    """The ``for=`` of each element of ``Forwarded: for=1.2.3.4;proto=https, for="[::1]:80"``."""
    return [_node(value) for value in _for_values(header.split(","))]


def _for_values(elements: Iterable[str]) -> Iterable[str]:
    for element in elements:
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                yield value
                break
        else:
            yield "unknown"  # an element without for=: that hop did not say


def _node(text: str) -> str:
    """An address without quotes, brackets or port: ``"[2001:db8::1]:4711"`` -> ``2001:db8::1``."""
    node = text.strip().strip('"')
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node
