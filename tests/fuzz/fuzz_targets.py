# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What the fuzzers check, shared by the hypothesis tests and the atheris harnesses: bytes
from the wire go in, and only the documented exceptions may come out, with the invariants of
each parser holding. Each `check_*` takes everything it needs as arguments; `*_from_bytes`
derive those arguments from one flat input for coverage-guided fuzzing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from bridge.protocol.connect import MAX_HOST, ConnectReplyParser, ConnectRequestParser
from bridge.protocol.handshake import (
    MAX_ID,
    MAX_MESSAGE,
    MAX_NODE,
    MAX_SECRET,
    HelloParser,
    WelcomeParser,
)
from mux import events as ev
from mux.config import Config
from mux.connection import Connection
from mux.errors import RemoteProtocolError
from mux.frames import HEADER, HEADER_SIZE, FrameType
from mux.state import CAN_SEND

#: Small limits, so that generated input reaches them.
CONFIG = Config(
    accept_backlog=4,
    max_inbound_streams=8,
    max_stream_window=1 << 20,
    session_receive_budget=1 << 20,
    max_frame_size=1024,
    write_buffer_size=4096,
)
EVENT_TYPES = (
    ev.StreamOpened,
    ev.StreamAccepted,
    ev.DataReceived,
    ev.StreamEnded,
    ev.StreamReset,
    ev.WindowUpdated,
    ev.PingReceived,
    ev.PingAcknowledged,
    ev.GoAwayReceived,
)
PARSERS = (HelloParser, WelcomeParser, ConnectRequestParser, ConnectReplyParser)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- yamux frames ------------------------------------------------------------------------------


def check_frames(wire: bytes, cuts: Sequence[int], *, client: bool, react: bool) -> None:
    """Feed `wire` in pieces to a `Connection`. With `react`, the application opens streams
    first, accepts what the peer opens, reads what arrives and writes back, as a relay or an
    agent would. Only RemoteProtocolError may escape, and then the session is over."""
    conn = Connection(client=client, config=CONFIG, clock=_Clock())
    ours = {conn.open_stream() for _ in range(3)} if react else set()
    conn.data_to_send()
    delivered = 0
    try:
        for chunk in split(wire, cuts):
            events = conn.receive_data(chunk)
            # Each header in the input earns at most one frame in reply: no amplification.
            assert len(conn.data_to_send()) <= HEADER_SIZE * (len(chunk) // HEADER_SIZE + 2)
            for event in events:
                assert isinstance(event, EVENT_TYPES), event
                if isinstance(event, ev.DataReceived):
                    assert len(event.data) > 0
                    delivered += len(event.data)
            assert delivered <= len(wire)
            if react:
                _react(conn, events, ours)
                conn.data_to_send()
            if conn.terminated is not None:  # an error GoAway from the peer
                break
    except RemoteProtocolError as exc:
        out = bytes(conn.data_to_send())
        assert out[-HEADER_SIZE:] == HEADER.pack(0, FrameType.GO_AWAY, 0, 0, exc.code)
        assert conn.terminated is exc
    if conn.terminated is not None:
        try:
            conn.receive_data(bytes(HEADER_SIZE))
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("a terminated connection took more input")


def _react(conn: Connection, events: list[ev.Event], ours: set[int]) -> None:
    for event in events:
        stream_id = getattr(event, "stream_id", 0)
        if isinstance(event, ev.StreamOpened):
            # Accept what is still open; an ID opened, reset and opened again in one batch
            # is accepted once (and an ID seen before is left unaccepted).
            if conn.stream_state(stream_id) is not None and stream_id not in ours:
                conn.accept_stream(stream_id)
                ours.add(stream_id)
        elif isinstance(event, ev.DataReceived):
            conn.consumed(stream_id, len(event.data))
    for stream_id in ours:
        if conn.stream_state(stream_id) in CAN_SEND:
            conn.send_data(stream_id, b"x" * 100)


class _Clock:
    """Time that moves on by a millisecond per look, so that windows may grow."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def frames_from_bytes(data: bytes) -> None:
    """One flat input: a byte of options, a byte of chunk size, then the wire bytes."""
    if len(data) < 2:
        return
    options, step = data[0], data[1] + 1
    wire = data[2:]
    check_frames(wire, range(0, len(wire), step), client=bool(options & 1), react=bool(options & 2))


# -- handshake and connect messages ------------------------------------------------------------


def check_parser(parser_cls, data: bytes, cuts: Sequence[int]) -> object | None:
    """Feed `data` in pieces to a fresh parser: it returns a message or raises its own error
    class, never buffers more than its bound, and hands back what followed the message."""
    parser = parser_cls()
    fed = 0
    try:
        for chunk in split(data, cuts):
            fed += len(chunk)
            message = parser.feed(chunk)
            assert len(parser._buffer) <= parser_cls.max_size
            if message is not None:
                used = fed - len(parser.leftover)
                assert 0 < used <= parser_cls.max_size
                assert parser.leftover == data[used:fed]
                _check_message(message)
                return message
    except parser_cls.error:
        return None
    assert fed < parser_cls.max_size  # a parser that reached its bound has decided
    return None


def _check_message(message: object) -> None:
    for name, bound in (("bridge_id", MAX_ID), ("secret", MAX_SECRET), ("host", MAX_HOST)):
        value = getattr(message, name, None)
        if value is None or callable(value):  # Welcome.host() reads info, checked below
            continue
        assert 1 <= len(value) <= bound and value.isascii() and value.isprintable()
    for name in ("node", "host"):  # a Welcome's node names, from its info
        if callable(read := getattr(message, name, None)) and (named := read()) is not None:
            assert isinstance(named, str) and 0 < len(named.encode()) <= MAX_NODE
    if (info := getattr(message, "info", None)) is not None:
        assert isinstance(info, dict)
    if (text := getattr(message, "message", None)) is not None:
        assert len(text.encode()) <= MAX_MESSAGE
    if (port := getattr(message, "port", None)) is not None:
        assert 1 <= port <= 65535


def handshake_from_bytes(data: bytes) -> None:
    """One flat input: a byte choosing the parser and chunk size, then the wire bytes."""
    if not data:
        return
    parser_cls = PARSERS[data[0] % len(PARSERS)]
    step = (data[0] >> 2) + 1
    wire = data[1:]
    check_parser(parser_cls, wire, range(0, len(wire), step))
