# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The handshake and connect parsers (`bridge.protocol.handshake`, `bridge.protocol.connect`)
under generated input: arbitrary and mutated bytes raise only the parser's own error, and
valid messages survive any split and any trailing bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.protocol.connect import (
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
    encode_connect_request,
)
from bridge.protocol.handshake import (
    VERSIONS,
    Hello,
    HelloParser,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
    encode_welcome,
)

from .fuzz_targets import PARSERS, check_parser, handshake_from_bytes

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cuts = st.lists(st.integers(0, 1 << 12), max_size=6)
tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

hellos = st.builds(
    Hello,
    tokens.filter(lambda t: len(t) <= 64),
    tokens.filter(lambda t: len(t) <= 128),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4).filter(
        lambda info: len(encode_hello(Hello("i", "s", info))) <= 1225
    ),
)
# Welcomes in the versions this code speaks: of another version, only the fields every
# version starts with are read, and the rest is left over.
welcomes = st.builds(
    Welcome, st.sampled_from(WelcomeStatus), st.text(max_size=200), st.sampled_from(VERSIONS)
)
requests = st.builds(
    ConnectRequest,
    st.from_regex(r"[A-Za-z0-9._:%-]{1,255}", fullmatch=True),
    st.integers(1, 65535),
)
replies = st.builds(ConnectReply, st.sampled_from(ConnectStatus), st.text(max_size=200))
NAMES = ["Hello", "Welcome", "ConnectRequest", "ConnectReply"]
VALID = [
    (HelloParser, hellos, encode_hello),
    (WelcomeParser, welcomes, encode_welcome),
    (ConnectRequestParser, requests, encode_connect_request),
    (ConnectReplyParser, replies, encode_connect_reply),
]


@pytest.mark.parametrize("parser_cls", PARSERS, ids=lambda p: p.__name__)
@SETTINGS
@given(data=st.binary(max_size=1500), cuts=cuts)
def test_arbitrary_bytes(parser_cls, data, cuts):
    check_parser(parser_cls, data, cuts)


@pytest.mark.parametrize("parser_cls, messages, encode", VALID, ids=NAMES)
@SETTINGS
@given(data=st.data(), trailing=st.binary(max_size=50), cuts=cuts)
def test_valid_messages_survive_any_split(parser_cls, messages, encode, data, trailing, cuts):
    message = data.draw(messages)
    wire = encode(message) + trailing
    assert check_parser(parser_cls, wire, cuts) == message
    parser = parser_cls()
    assert parser.feed(wire) == message and parser.leftover == trailing


@pytest.mark.parametrize("parser_cls, messages, encode", VALID, ids=NAMES)
@SETTINGS
@given(data=st.data(), cuts=cuts)
def test_mutated_messages(parser_cls, messages, encode, data, cuts):
    wire = bytearray(encode(data.draw(messages)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or position == len(wire):
            wire[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "flip":
            wire[position] ^= data.draw(st.integers(1, 255))
        else:
            del wire[position]
    check_parser(parser_cls, bytes(wire), cuts)


@SETTINGS
@given(st.binary(max_size=1500))
def test_flat_input_as_the_coverage_guided_fuzzer_feeds_it(data):
    handshake_from_bytes(data)
