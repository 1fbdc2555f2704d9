# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.connect import (
    MAX_REPLY,
    MAX_REQUEST,
    ConnectError,
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
    encode_connect_request,
)


@pytest.mark.parametrize(
    "host", ["db", "db.internal.example.com", "10.0.0.5", "::1", "fe80::1%eth0"]
)
def test_request_round_trip(host):
    request = ConnectRequest(host, 5432)
    data = encode_connect_request(request)
    parser = ConnectRequestParser()
    assert parser.feed(data + b"early bytes") == request
    assert parser.leftover == b"early bytes"


def test_request_layout_and_bound():
    assert encode_connect_request(ConnectRequest("db", 5432)) == b"\x01\x02db\x15\x38"
    assert len(encode_connect_request(ConnectRequest("h" * 255, 65535))) == MAX_REQUEST == 259


def test_request_bytewise():
    data = encode_connect_request(ConnectRequest("db", 5432))
    parser = ConnectRequestParser()
    assert [parser.feed(data[i : i + 1]) for i in range(len(data) - 1)] == [None] * (len(data) - 1)
    assert parser.feed(data[-1:]) == ConnectRequest("db", 5432)


@pytest.mark.parametrize(
    "host, port",
    [("", 1), ("h" * 256, 1), ("a b", 1), ("[::1]", 1), ("db\n", 1), ("db", 0), ("db", 65536)],
)
def test_invalid_request_values(host, port):
    with pytest.raises(ValueError):
        ConnectRequest(host, port)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x02\x02db\x00\x01", "version 2"),
        (b"\x01\x00", "host length 0"),
        (b"\x01\x02d\x00\x00\x01", "printable"),
        (b"\x01\x02d\xc3\x00\x01", "ASCII"),
        (b"\x01\x03d/b\x00\x01", "invalid host"),
        (b"\x01\x02db\x00\x00", "port 0"),
    ],
)
def test_malformed_request(data, match):
    with pytest.raises(ConnectError, match=match):
        ConnectRequestParser().feed(data)


@pytest.mark.parametrize("status", list(ConnectStatus))
def test_reply_round_trip(status):
    reply = ConnectReply(status, "Host not in allowed hosts list: db:5432")
    parser = ConnectReplyParser()
    assert parser.feed(encode_connect_reply(reply) + b"data") == reply
    assert parser.leftover == b"data"


def test_reply_layout_and_bound():
    assert (
        encode_connect_reply(ConnectReply(ConnectStatus.OK, "1.2.3.4:5"))
        == b"\x00\x00\x091.2.3.4:5"
    )
    assert (
        len(encode_connect_reply(ConnectReply(ConnectStatus.OK, "x" * 1024))) == MAX_REPLY == 1027
    )
    with pytest.raises(ValueError):
        ConnectReply(ConnectStatus.OK, "x" * 1025)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x08\x00\x00", "unknown connect status 8"),
        (b"\x00\x04\x01", "length 1025"),
        (b"\x00\x00\x01\x80", "UTF-8"),
    ],
)
def test_malformed_reply(data, match):
    with pytest.raises(ConnectError, match=match):
        ConnectReplyParser().feed(data)


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=300))
def test_request_parser_on_garbage(data, chunk):
    parser = ConnectRequestParser()
    try:
        for i in range(0, len(data), chunk):
            if (request := parser.feed(data[i : i + chunk])) is not None:
                assert isinstance(request, ConnectRequest)
                break
    except ConnectError:
        pass


@given(st.binary(max_size=1200))
def test_reply_parser_on_garbage(data):
    try:
        ConnectReplyParser().feed(data)
    except ConnectError:
        pass


@given(
    st.from_regex(r"[A-Za-z0-9._:%-]{1,255}", fullmatch=True),
    st.integers(min_value=1, max_value=65535),
)
def test_request_round_trip_property(host, port):
    request = ConnectRequest(host, port)
    assert ConnectRequestParser().feed(encode_connect_request(request)) == request
