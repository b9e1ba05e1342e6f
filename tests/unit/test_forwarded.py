"""The client address the audit records behind reverse proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.core.forwarded import MAX_HOPS, client_address

INGRESS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_without_trusted_proxies_the_headers_are_ignored() -> None:
    assert client_address("10.1.2.3", "for=203.0.113.7", "203.0.113.7", ()) == "10.1.2.3"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_address("198.51.100.9", "for=203.0.113.7", "203.0.113.7",
                          INGRESS) == "198.51.100.9"


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    assert client_address("10.1.2.3", None, "203.0.113.7", INGRESS) == "203.0.113.7"


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    """The client wrote the leftmost entry itself: only what trusted proxies appended counts."""
    header = "6.6.6.6, 203.0.113.7, 10.9.9.9"
    assert client_address("10.1.2.3", None, header, INGRESS) == "203.0.113.7"


def test_forwarded_is_preferred_and_its_quoted_ipv6_with_port_is_unwrapped() -> None:
    forwarded = 'for="[2001:db8::7]:4711";proto=https, for=10.2.2.2'
    assert client_address("fd00::1", forwarded, "198.51.100.1", INGRESS) == "2001:db8::7"


def test_a_forwarded_ipv4_with_a_port_loses_the_port() -> None:
    assert client_address("10.1.2.3", "for=203.0.113.7:5555", None, INGRESS) == "203.0.113.7"


def test_a_proxy_that_hid_the_client_is_taken_at_its_word() -> None:
    assert client_address("10.1.2.3", "for=unknown", None, INGRESS) == "unknown"
    assert client_address("10.1.2.3", "proto=https", None, INGRESS) == "unknown"


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    assert client_address("10.1.2.3", None, None, INGRESS) == "10.1.2.3"


def test_a_chain_of_only_trusted_hops_gives_the_leftmost() -> None:
    assert client_address("10.1.2.3", None, "10.7.7.7, 10.8.8.8", INGRESS) == "10.7.7.7"


@pytest.mark.parametrize("hops", [MAX_HOPS + 10, 5000])
def test_a_very_long_chain_is_read_only_as_far_as_the_hop_limit(hops: int) -> None:
    header = ", ".join(["10.0.0.1"] * hops)
    assert client_address("10.1.2.3", None, header, INGRESS) == "10.0.0.1"
