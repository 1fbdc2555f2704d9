# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Relay URL lists, fingerprint lists, and the order of a round of connection attempts."""

import itertools
import random
import socket

import pytest
import trio

from bridge.agent.relay_endpoints import (
    MAX_ADDRESSES_PER_NAME,
    RelayEndpoint,
    order_endpoints,
    resolve_endpoints,
)
from bridge.agent.relay_url import RelayURL, parse_relay_urls
from bridge.transport.http_proxy import ProxyURL
from bridge.transport.tls import PinnedSSLContext, client_ssl_context, parse_fingerprints

A, B, C = (bytes([n]) * 32 for n in (1, 2, 3))


def test_a_list_of_relay_urls():
    urls = parse_relay_urls(" tls://relay1:4001, wss://relay2 ,,tls://relay1:4001,tls://[::1]")
    assert [str(url) for url in urls] == [
        "tls://relay1:4001",
        "wss://relay2:443/bridge",
        "tls://[::1]:4000",
    ]
    assert parse_relay_urls("tls://relay") == (RelayURL("tls", "relay"),)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "tls://relay1,relay2:4000",
            "invalid relay URL 'relay2:4000' (entry 2 of 2): expected tls://HOST[:PORT] or "
            "wss://HOST[:PORT]/bridge, e.g. tls://relay.example.com:4000",
        ),
        ("https://relay", "invalid relay URL 'https://relay': expected tls://HOST[:PORT]"),
        (
            "tls://a, tls://b:99999, tls://c",
            "invalid relay URL 'tls://b:99999' (entry 2 of 3): expected",
        ),
        (" , ", "no relay URL given: expected tls://HOST[:PORT]"),
    ],
)
def test_a_malformed_entry_is_named(text, expected):
    with pytest.raises(ValueError) as info:
        parse_relay_urls(text)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_a_list_of_fingerprints():
    text = f"sha256:{A.hex()}, SHA256:{B.hex().upper()},,sha256:{A.hex()}"
    assert parse_fingerprints(text) == (A, B)
    pinned = client_ssl_context(fingerprint=text)
    assert isinstance(pinned, PinnedSSLContext) and pinned.fingerprints == (A, B)
    assert client_ssl_context(fingerprint=[A, C, A]).fingerprints == (A, C)
    assert client_ssl_context(fingerprint=B).fingerprints == (B,)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            f"sha256:{A.hex()},sha256:abc",
            "invalid certificate fingerprint 'sha256:abc' (entry 2 of 2): expected sha256: "
            "followed by 64 hex digits, several separated by commas",
        ),
        (f"md5:00,sha256:{A.hex()}", "invalid certificate fingerprint 'md5:00' (entry 1 of 2)"),
        (" , ", "invalid certificate fingerprint: expected sha256: followed by 64 hex digits"),
        ("sha256:abc", "invalid certificate fingerprint: expected sha256:"),
    ],
)
def test_a_malformed_fingerprint_is_named(text, expected):
    with pytest.raises(ValueError) as info:
        client_ssl_context(fingerprint=text)
    assert str(info.value).startswith(expected)


def endpoints(*names: str) -> list[RelayEndpoint]:
    return [RelayEndpoint(RelayURL("tls", "relay.example.com"), name) for name in names]


def test_a_round_tries_every_address_once_in_every_order():
    round_ = endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1")
    orders = set()
    for seed in range(200):
        ordered = order_endpoints(round_, random.Random(seed))
        assert sorted(e.ip or "" for e in ordered) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        orders.add(tuple(e.ip for e in ordered))
    assert orders == set(itertools.permutations(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))


def test_the_endpoint_of_the_lost_session_goes_last():
    round_ = endpoints("10.0.0.1", "10.0.0.2", "10.0.0.3")
    lost = endpoints("10.0.0.2")[0]
    firsts = set()
    for seed in range(50):
        ordered = order_endpoints(round_, random.Random(seed), last=lost)
        assert ordered[-1] == lost
        firsts.add(ordered[0].ip)
    assert firsts == {"10.0.0.1", "10.0.0.3"}  # the others are still shuffled
    gone = endpoints("10.9.9.9")[0]  # no longer resolved: nothing moves
    assert len(order_endpoints(round_, random.Random(1), last=gone)) == 3


def test_endpoints_differ_by_url_and_by_proxy():
    url = RelayURL("tls", "relay.example.com")
    proxy = ProxyURL("proxy")
    round_ = [
        RelayEndpoint(url, "10.0.0.1"),
        RelayEndpoint(RelayURL("tls", "other.example.com"), "10.0.0.1"),  # same address
        RelayEndpoint(RelayURL("tls", "relay.example.com", 4001), "10.0.0.1"),
        RelayEndpoint(RelayURL("wss", "relay.example.com", 4000, "/bridge"), "10.0.0.1"),
        RelayEndpoint(url, None, proxy),
    ]
    assert len(order_endpoints(round_, random.Random(0))) == 4
    assert RelayEndpoint(url, "10.0.0.1").log_fields() == {
        "address": "relay.example.com:4000",
        "ip": "10.0.0.1",
    }
    assert RelayEndpoint(RelayURL("tls", "10.0.0.1"), "10.0.0.1").log_fields() == {
        "address": "10.0.0.1:4000"
    }


async def test_resolving_names_addresses_and_proxied_urls():
    (local,) = await resolve_endpoints(RelayURL("tls", "localhost", 4001), None)
    assert (local.ip, local.dial_host) == ("127.0.0.1", "127.0.0.1")
    (literal,) = await resolve_endpoints(RelayURL("tls", "::1"), None)
    assert literal.ip == "::1"
    proxy = ProxyURL("proxy", 3128)
    (proxied,) = await resolve_endpoints(RelayURL("tls", "localhost"), proxy)
    assert (proxied.ip, proxied.dial_host, proxied.proxy) == (None, "localhost", proxy)
    with pytest.raises(OSError):
        await resolve_endpoints(RelayURL("tls", "no-such-relay.invalid"), None)


class ManyAddresses(trio.abc.HostnameResolver):
    """Trio's resolver hook: a name with more addresses than an agent uses."""

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"127.0.1.{n}", port))
            for n in range(1, 40)
        ]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


async def test_a_name_gives_at_most_a_bounded_number_of_addresses():
    previous = trio.socket.set_custom_hostname_resolver(ManyAddresses())
    try:
        found = await resolve_endpoints(RelayURL("tls", "relays.test"), None)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert [e.ip for e in found] == [f"127.0.1.{n}" for n in range(1, 17)]
    assert len(found) == MAX_ADDRESSES_PER_NAME
