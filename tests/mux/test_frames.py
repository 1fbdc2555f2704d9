# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The 12-byte frame header against frames captured from hashicorp/yamux."""

from __future__ import annotations

import functools
import operator
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.errors import RemoteProtocolError
from mux.frames import HEADER_SIZE, Flag, FrameType, GoAwayCode, decode_header, encode_header

from .mux_support import raw_header

T, F = FrameType, Flag
u32 = st.integers(0, 2**32 - 1)
flag_sets = st.sets(st.sampled_from([F.SYN, F.ACK, F.FIN, F.RST])).map(
    lambda flags: functools.reduce(operator.or_, flags, F.NONE)
)
SETTINGS = settings(max_examples=150, deadline=None)

GOLDEN = [
    pytest.param("000100010000000100000000", T.WINDOW_UPDATE, F.SYN, 1, 0, id="open"),
    pytest.param(
        "0001000100000001000c0000", T.WINDOW_UPDATE, F.SYN, 1, 786432, id="open-1MiB-window"
    ),
    pytest.param("000100020000000100000000", T.WINDOW_UPDATE, F.ACK, 1, 0, id="ack"),
    pytest.param("0000000000000001000222e0", T.DATA, 0, 1, 140000, id="data-140000"),
    pytest.param("0001000000000001000222e0", T.WINDOW_UPDATE, 0, 1, 140000, id="window-update"),
    pytest.param("000100040000000100000000", T.WINDOW_UPDATE, F.FIN, 1, 0, id="fin"),
    pytest.param("000100080000000400000000", T.WINDOW_UPDATE, F.RST, 4, 0, id="rst"),
    pytest.param("000200010000000000000000", T.PING, F.SYN, 0, 0, id="ping"),
    pytest.param("000200020000000000000000", T.PING, F.ACK, 0, 0, id="pong"),
    pytest.param("000300000000000000000000", T.GO_AWAY, 0, 0, GoAwayCode.NORMAL, id="go-away"),
]


def test_wire_constants():
    assert HEADER_SIZE == 12
    assert [int(t) for t in (T.DATA, T.WINDOW_UPDATE, T.PING, T.GO_AWAY)] == [0, 1, 2, 3]
    assert [int(f) for f in (F.SYN, F.ACK, F.FIN, F.RST)] == [1, 2, 4, 8]
    codes = (GoAwayCode.NORMAL, GoAwayCode.PROTOCOL_ERROR, GoAwayCode.INTERNAL_ERROR)
    assert [int(c) for c in codes] == [0, 1, 2]


@pytest.mark.parametrize(("wire", "type", "flags", "stream_id", "length"), GOLDEN)
def test_encode_matches_captured_frame(wire, type, flags, stream_id, length):
    assert encode_header(type, flags, stream_id, length) == bytes.fromhex(wire)


@pytest.mark.parametrize(("wire", "type", "flags", "stream_id", "length"), GOLDEN)
def test_decode_captured_frame(wire, type, flags, stream_id, length):
    header = decode_header(bytes.fromhex(wire))
    assert (header.version, header.type, header.flags, header.stream_id, header.length) == (
        0,
        type,
        flags,
        stream_id,
        length,
    )


@SETTINGS
@given(
    st.sampled_from(FrameType), flag_sets, u32, u32, st.binary(max_size=20), st.binary(max_size=20)
)
def test_round_trip(type, flags, stream_id, length, before, after):
    wire = encode_header(type, flags, stream_id, length)
    assert wire == struct.pack(">BBHII", 0, type, flags, stream_id, length)
    header = decode_header(before + wire + after, len(before))
    assert (header.version, header.type, header.flags, header.stream_id, header.length) == (
        0,
        type,
        flags,
        stream_id,
        length,
    )


@SETTINGS
@given(st.integers(1, 255), st.integers(0, 255), st.integers(0, 0xFFFF), u32, u32)
def test_unknown_version_is_rejected(version, type, flags, stream_id, length):
    with pytest.raises(RemoteProtocolError) as error:
        decode_header(raw_header(version, type, flags, stream_id, length))
    assert error.value.code == GoAwayCode.PROTOCOL_ERROR


@SETTINGS
@given(st.integers(4, 255), st.integers(0, 0xFFFF), u32, u32)
def test_unknown_type_is_rejected(type, flags, stream_id, length):
    with pytest.raises(RemoteProtocolError) as error:
        decode_header(raw_header(0, type, flags, stream_id, length))
    assert error.value.code == GoAwayCode.PROTOCOL_ERROR
