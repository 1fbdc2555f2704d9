# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The PROXY protocol parser (`relay.proxy_protocol`, sans-IO): known headers, and generated
input — arbitrary and mutated bytes raise only `ProxyHeaderError`, and valid headers parse
the same however the bytes arrive, never looking past their end."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.proxy_protocol import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_proxy_header,
    parse_proxy_header,
    starts_like_proxy_header,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_growing(data: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse as a server does: with one more byte each time, until an answer comes."""
    for end in range(1, len(data) + 1):
        if (result := parse_proxy_header(data[:end])) is not None:
            return result
    return None


# -- known headers -------------------------------------------------------------------------------


def test_version_1():
    wire = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 4000\r\nTLS..."
    assert parse_proxy_header(wire) == (
        ProxyHeader(1, ("203.0.113.7", 40001), ("192.0.2.1", 4000)),
        wire.index(b"TLS"),
    )
    wire = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n"
    assert parse_proxy_header(wire) == (
        ProxyHeader(1, ("2001:db8::7", 1), ("2001:db8::1", 65535)),
        len(wire),
    )
    unknown = b"PROXY UNKNOWN ffff::1 whatever\r\n"
    assert parse_proxy_header(unknown) == (ProxyHeader(1), len(unknown))
    assert parse_proxy_header(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 4") is None


def test_version_2():
    wire = encode_proxy_header(("203.0.113.7", 40001), ("192.0.2.1", 4000))
    assert wire.startswith(V2_SIGNATURE) and len(wire) == 28
    header = ProxyHeader(2, ("203.0.113.7", 40001), ("192.0.2.1", 4000))
    assert parse_proxy_header(wire + b"\x16\x03") == (header, 28)
    # TLVs after the addresses are skipped.
    with_tlv = wire[:14] + (12 + 7).to_bytes(2, "big") + wire[16:] + b"\x04\x00\x04abcd"
    assert parse_proxy_header(with_tlv) == (header, len(with_tlv))
    local = encode_proxy_header(None)
    assert parse_proxy_header(local) == (ProxyHeader(2), 16)
    six = encode_proxy_header(("2001:db8::7", 1), ("2001:db8::1", 2))
    assert parse_proxy_header(six)[0].source == ("2001:db8::7", 1)


@pytest.mark.parametrize(
    "wire, reason",
    [
        (b"\x16\x03\x01\x02\x00", "not a PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", None),  # incomplete, not wrong
        (b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n", "invalid address"),
        (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY TCP4"),
        (b"PROXY TCP4 1.2.3.4\n", "without CRLF"),
        (b"PROXY " + b"1" * 110, "without CRLF within 107 bytes"),
        (b"PROXY TCP4 \x00", "non-printable"),
        (V2_SIGNATURE + b"\x31", "unsupported version 3"),
        (V2_SIGNATURE + b"\x22", "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x12", "unsupported family 0x12"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04", "too short"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most 2048"),
    ],
)
def test_invalid_headers_are_refused_as_soon_as_they_are_known_to_be(wire, reason):
    if reason is None:
        assert parse_proxy_header(wire) is None
        return
    with pytest.raises(ProxyHeaderError, match=reason):
        parse_proxy_header(wire)


def test_what_can_start_a_header():
    assert starts_like_proxy_header(b"P") and starts_like_proxy_header(b"\r")
    assert starts_like_proxy_header(b"PROXY TCP4") and starts_like_proxy_header(V2_SIGNATURE)
    assert not starts_like_proxy_header(b"\x16") and not starts_like_proxy_header(b"")
    assert not starts_like_proxy_header(b"POST /")


# -- generated input -----------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
headers = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)


@SETTINGS
@given(addresses=headers, version=st.sampled_from([1, 2]), trailing=st.binary(max_size=40))
def test_valid_headers_parse_the_same_however_they_arrive(addresses, version, trailing):
    source, destination = addresses
    wire = encode_proxy_header(source, destination, version=version)
    expected = (ProxyHeader(version, _normal(source), _normal(destination)), len(wire))
    assert parse_proxy_header(wire + trailing) == expected
    assert parse_growing(wire + trailing) == expected
    for end in range(len(wire)):  # a proper prefix is never complete, and never refused
        assert parse_proxy_header(wire[:end]) is None


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_parser_error(data):
    _check(data)
    _check(b"PROXY " + data)
    _check(V2_SIGNATURE + data)


@SETTINGS
@given(addresses=headers, version=st.sampled_from([1, 2]), data=st.data())
def test_mutated_headers(addresses, version, data):
    wire = bytearray(encode_proxy_header(*addresses, version=version))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            wire[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            wire[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del wire[position]
    _check(bytes(wire))


def _check(data: bytes) -> None:
    """Whatever `data` is: ProxyHeaderError, None, or a header within the bytes given; and
    the answer for `data` is the answer for its first MAX_HEADER bytes."""
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        return
    if result is not None:
        header, size = result
        assert 0 < size <= min(len(data), MAX_HEADER)
        assert parse_proxy_header(data[:size]) == result
        for address in (header.source, header.destination):
            if address is not None:
                ipaddress.ip_address(address[0])
                assert 0 <= address[1] <= 65535
    else:
        assert len(data) < MAX_HEADER


def _normal(address: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(address[0])), address[1]
