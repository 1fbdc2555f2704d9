# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.handshake import (
    MAX_HELLO,
    MAX_WELCOME,
    MAX_WELCOME_V1,
    Agreement,
    HandshakeError,
    Hello,
    HelloParser,
    UnsupportedVersion,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
    encode_welcome,
    negotiate,
    welcome_for,
)

HELLO = Hello(
    "0db4d173-a5ba-4be9-ae26-beab2f2875ee", "s3cr3t-value", {"agent": "trio-bridge/0.1.0"}
)


def feed_bytewise(parser, data):
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
        if result is not None:
            return result
    return None


def test_hello_round_trip_whole_and_bytewise():
    data = encode_hello(HELLO)
    parser = HelloParser()
    assert parser.feed(data + b"yamux") == HELLO
    assert parser.leftover == b"yamux"
    assert feed_bytewise(HelloParser(), data) == HELLO


def test_hello_layout():
    data = encode_hello(Hello("id", "pw", {}))
    assert data == b"TBRG\x01\x02id\x02pw\x00\x00"


def test_largest_hello_fits_the_bound():
    info = {"x": "y" * (1024 - len('{"x":""}'))}
    hello = Hello("i" * 64, "s" * 128, info)
    data = encode_hello(hello)
    assert len(data) == MAX_HELLO == 1225
    assert HelloParser().feed(data) == hello


def test_secret_not_in_repr():
    assert "s3cr3t" not in repr(HELLO)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bridge_id": ""},
        {"bridge_id": "x" * 65},
        {"bridge_id": "with space"},
        {"secret": ""},
        {"secret": "s" * 129},
        {"secret": "é"},
    ],
)
def test_hello_rejects_invalid_fields(kwargs):
    fields = {"bridge_id": "id", "secret": "pw", "info": {}, **kwargs}
    with pytest.raises(ValueError):
        Hello(**fields)


def test_hello_info_too_large_to_encode():
    with pytest.raises(ValueError, match="info"):
        encode_hello(Hello("id", "pw", {"x": "y" * 1024}))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"GET / HTTP/1.1\r\n", "magic"),
        (b"TBRG\x01\x00", "bridge id length 0"),
        (b"TBRG\x01\x41", "bridge id length 65"),
        (b"TBRG\x01\x02id\x00", "secret length 0"),
        (b"TBRG\x01\x02id\x81", "secret length 129"),
        (b"TBRG\x01\x02id\x02pw\x04\x01", "info length 1025"),
        (b"TBRG\x01\x02i\x00\x02pw\x00\x00", "printable"),
        (b"TBRG\x01\x02id\x02p\xff\x00\x00", "ASCII"),
        (b"TBRG\x01\x02id\x02pw\x00\x02\xff\xfe", "UTF-8"),
        (b"TBRG\x01\x02id\x02pw\x00\x02{]", "JSON"),
        (b"TBRG\x01\x02id\x02pw\x00\x02[]", "JSON object"),
        (b"TBRG\x01\x02id\x02pw\x00\x03NaN", "JSON"),
    ],
)
def test_malformed_hello(data, match):
    with pytest.raises(HandshakeError, match=match):
        HelloParser().feed(data)


def test_deeply_nested_info_is_malformed_not_a_crash():
    info = b"[" * 1024
    with pytest.raises(HandshakeError):
        HelloParser().feed(b"TBRG\x01\x02id\x02pw" + len(info).to_bytes(2, "big") + info)


def test_unsupported_version_is_reported_as_soon_as_known():
    parser = HelloParser()
    assert parser.feed(b"TBR") is None
    with pytest.raises(UnsupportedVersion) as info:
        parser.feed(b"G\x07")
    assert info.value.version == 7
    assert isinstance(info.value, HandshakeError)


def test_parser_never_buffers_beyond_the_bound():
    parser = HelloParser()
    data = encode_hello(HELLO)
    assert parser.feed(data + b"\x00" * 1_000_000) == HELLO
    assert len(parser.leftover) == 1_000_000


def test_feed_after_complete_is_an_error():
    parser = WelcomeParser()
    assert parser.feed(encode_welcome(Welcome(WelcomeStatus.OK))) is not None
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


@pytest.mark.parametrize("status", list(WelcomeStatus))
def test_welcome_round_trip(status):
    welcome = Welcome(status, "invalid bridge credentials ✓")
    data = encode_welcome(welcome)
    parser = WelcomeParser()
    assert parser.feed(data + b"\x00\x00") == welcome
    assert parser.leftover == b"\x00\x00"
    assert feed_bytewise(WelcomeParser(), data) == welcome


def test_welcome_layout_and_bound():
    assert encode_welcome(Welcome(WelcomeStatus.AUTH_FAILED, "no")) == b"TBRG\x01\x02\x00\x02no"
    largest = Welcome(WelcomeStatus.BUSY, "m" * 1024)
    assert len(encode_welcome(largest)) == MAX_WELCOME_V1 == 1032
    info = {"x": "y" * (1024 - len('{"x":""}'))}
    largest = Welcome(WelcomeStatus.OK, "m" * 1024, 2, info)
    assert len(encode_welcome(largest)) == MAX_WELCOME == 2058
    assert WelcomeParser().feed(encode_welcome(largest)) == largest
    with pytest.raises(ValueError):
        Welcome(WelcomeStatus.BUSY, "m" * 1025)


def test_welcome_of_another_version_is_parsed():
    data = encode_welcome(Welcome(WelcomeStatus.UNSUPPORTED_VERSION, "speak 2", version=2))
    assert WelcomeParser().feed(data) == Welcome(WelcomeStatus.UNSUPPORTED_VERSION, "speak 2", 2)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"XBRG\x01\x00\x00\x00", "magic"),
        (b"TBRG\x01\x09\x00\x00", "unknown welcome status 9"),
        (b"TBRG\x01\x00\x04\x01", "message length 1025"),
        (b"TBRG\x01\x00\x00\x01\xff", "UTF-8"),
    ],
)
def test_malformed_welcome(data, match):
    with pytest.raises(HandshakeError, match=match):
        WelcomeParser().feed(data)


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_hello_parser_on_garbage(data, chunk):
    parser = HelloParser()
    try:
        for i in range(0, len(data), chunk):
            if parser.feed(data[i : i + chunk]) is not None:
                break
    except HandshakeError:
        pass


@given(st.binary(max_size=2000))
def test_welcome_parser_on_garbage(data):
    try:
        WelcomeParser().feed(data)
    except HandshakeError:
        pass


ident = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    ident,
    ident,
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    st.binary(max_size=50),
)
def test_hello_round_trip_property(bridge_id, secret, info, tail):
    hello = Hello(bridge_id, secret, info)
    if len(json.dumps(info, separators=(",", ":"), ensure_ascii=False).encode()) > 1024:
        return
    parser = HelloParser()
    assert parser.feed(encode_hello(hello) + tail) == hello
    assert parser.leftover == tail


# -- negotiation, old against new -------------------------------------------------------------

#: A Hello exactly as release 0.1.0 encoded it (no versions, no capabilities).
HELLO_0_1 = (
    b"TBRG\x01$0db4d173-a5ba-4be9-ae26-beab2f2875ee\x0cs3cr3t-value\x00/"
    b'{"agent":"trio-bridge/0.1.0","hostname":"db-1"}'
)
#: The Welcome release 0.1.0 sent on success, and what its agent accepted (nothing else).
WELCOME_0_1 = b"TBRG\x01\x00\x00\x1cconnected as bridge prod-vpc"


def test_a_hello_of_the_previous_release_is_answered_in_version_1():
    hello = HelloParser().feed(HELLO_0_1)
    assert hello.versions() == {1}
    agreement = negotiate(hello)
    assert agreement == Agreement(1)
    welcome = welcome_for(agreement, WelcomeStatus.OK, "connected as bridge prod-vpc")
    assert encode_welcome(welcome) == WELCOME_0_1


def test_a_welcome_of_the_previous_release_is_read_without_capabilities():
    welcome = WelcomeParser().feed(WELCOME_0_1 + b"\x00yamux")
    assert welcome == Welcome(WelcomeStatus.OK, "connected as bridge prod-vpc", 1)
    assert welcome.capabilities() == frozenset()


def test_new_agent_and_new_relay_agree_on_version_2_and_control():
    hello = Hello("id", "pw", {"versions": [1, 2], "capabilities": ["control", "future"]})
    agreement = negotiate(HelloParser().feed(encode_hello(hello)))
    assert agreement == Agreement(2, frozenset({"control"}))
    data = encode_welcome(welcome_for(agreement, WelcomeStatus.OK, "hi"))
    assert data == b'TBRG\x02\x00\x00\x02hi\x00\x1c{"capabilities":["control"]}'
    welcome = WelcomeParser().feed(data)
    assert welcome.version == 2 and welcome.capabilities() == {"control"}


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"versions": [1, 2, 7]}, Agreement(2)),  # a newer agent: the highest common one
        ({"versions": [1]}, Agreement(1)),
        ({"versions": "2"}, Agreement(1)),  # not a list: treated as a 0.1 agent
        ({"versions": [True, 2.0, 2], "capabilities": [1, "control"]}, Agreement(2, {"control"})),
        ({"versions": [3, 4]}, None),
        ({"versions": []}, None),
    ],
)
def test_negotiate_picks_the_highest_common_version(info, expected):
    if expected is not None:
        expected = Agreement(expected.version, frozenset(expected.capabilities))
    assert negotiate(Hello("id", "pw", info)) == expected


def test_unsupported_version_keeps_the_version_1_layout():
    welcome = welcome_for(Agreement(2), WelcomeStatus.UNSUPPORTED_VERSION, "no")
    data = encode_welcome(welcome)
    assert data == b"TBRG\x02\x01\x00\x02no"
    assert WelcomeParser().feed(data) == Welcome(WelcomeStatus.UNSUPPORTED_VERSION, "no", 2)


def test_the_relay_names_its_node_to_agents_that_ask():
    asks = Hello("id", "pw", {"versions": [1, 2], "capabilities": ["control", "node"]})
    agreement = negotiate(asks)
    assert agreement == Agreement(2, frozenset({"control", "node"}))
    welcome = welcome_for(agreement, WelcomeStatus.OK, "hi", node="relay-1")
    parsed = WelcomeParser().feed(encode_welcome(welcome))
    assert parsed.node() == "relay-1" and parsed.capabilities() == {"control", "node"}
    # Not asked (an agent of a previous release), a refusal, or a name too long: no name.
    older = negotiate(Hello("id", "pw", {"versions": [1, 2], "capabilities": ["control"]}))
    assert "node" not in welcome_for(older, WelcomeStatus.OK, node="relay-1").info
    assert "node" not in welcome_for(agreement, WelcomeStatus.BUSY, node="relay-1").info
    assert "node" not in welcome_for(agreement, WelcomeStatus.OK, node="n" * 256).info
    assert welcome_for(agreement, WelcomeStatus.OK, node="n" * 255).node() == "n" * 255
    # What a relay sends that is not a name is no name.
    for bad in (7, "", None, ["relay-1"]):
        assert Welcome(WelcomeStatus.OK, "", 2, {"node": bad}).node() is None


def test_a_worker_names_its_host_besides_its_node():
    agreement = negotiate(Hello("id", "pw", {"versions": [2], "capabilities": ["node"]}))
    welcome = welcome_for(agreement, WelcomeStatus.OK, node="edge/worker-1.3", host="edge")
    parsed = WelcomeParser().feed(encode_welcome(welcome))
    assert (parsed.node(), parsed.host()) == ("edge/worker-1.3", "edge")
    # A node of one process names no host; nor does a Welcome without the capability.
    assert welcome_for(agreement, WelcomeStatus.OK, node="edge").host() is None
    older = negotiate(Hello("id", "pw", {"versions": [2], "capabilities": ["control"]}))
    assert "host" not in welcome_for(older, WelcomeStatus.OK, node="a", host="edge").info
    assert "host" not in welcome_for(agreement, WelcomeStatus.OK, node="a", host="h" * 256).info
    for bad in (7, "", None, ["edge"]):
        assert Welcome(WelcomeStatus.OK, "", 2, {"node": "a", "host": bad}).host() is None
