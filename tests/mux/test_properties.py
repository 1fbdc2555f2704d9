# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Properties of the sans-IO core over generated input."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mux.config import Config
from mux.connection import Connection
from mux.errors import RemoteProtocolError
from mux.events import GoAwayReceived
from mux.frames import Flag, FrameType, GoAwayCode

from .mux_support import (
    INITIAL_WINDOW,
    MIB,
    STATES,
    Data,
    Link,
    check_event_order,
    data,
    go_away,
    merge,
    parse_frames,
    ping,
    raw_header,
    stream_in_state,
    window,
)

SMALL_BUDGET = Config(max_stream_window=MIB, session_receive_budget=MIB)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
u32 = st.integers(0, 2**32 - 1)
PATTERN = bytes(range(251)) * 400  # 100 KiB of bytes that show misplaced slices


def payloads(limit: int) -> st.SearchStrategy[bytes]:
    sizes = st.integers(0, min(limit, 300)) | st.integers(0, min(limit, 70_000))
    return st.tuples(sizes, st.integers(0, 250)).map(lambda t: PATTERN[t[1] : t[1] + t[0]])


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    return [blob[a:b] for a, b in itertools.pairwise(bounds)]


def feed(conn: Connection, chunks: list[bytes]) -> list[object]:
    received = []
    for chunk in chunks:
        received += conn.receive_data(chunk)
    return merge(received)


# ---- (a) the same events whatever way the input is split --------------------------------------


@st.composite
def peer_traffic(draw, first_id: int) -> bytes:
    """Frames a well-behaved peer could send: data within windows, SYNs a little out of order."""
    frames, credit, finished, reset = [], {}, set(), set()
    for _ in range(draw(st.integers(1, 30))):
        sending = sorted(set(credit) - finished - reset)
        alive = sorted(set(credit) - reset)
        ops = ["open", "ping", "unknown"]
        ops += ["data", "fin", "rst"] * bool(sending) + ["window"] * bool(alive)
        op = draw(st.sampled_from(ops))
        if op == "open":
            unused = (i for i in range(first_id, first_id + 200, 2) if i not in credit)
            stream_id = draw(st.sampled_from([next(unused), next(unused), next(unused)]))
            credit[stream_id] = INITIAL_WINDOW
            if draw(st.booleans()):
                payload = draw(payloads(INITIAL_WINDOW))
                credit[stream_id] -= len(payload)
                frames.append(data(stream_id, payload, Flag.SYN))
            else:
                frames.append(window(stream_id, draw(st.integers(0, MIB)), Flag.SYN))
        elif op == "data":
            stream_id = draw(st.sampled_from(sending))
            payload = draw(payloads(credit[stream_id]))
            credit[stream_id] -= len(payload)
            flags = draw(st.sampled_from([0, 0, Flag.FIN]))
            frames.append(data(stream_id, payload, flags))
            if flags:
                finished.add(stream_id)
        elif op in ("fin", "rst"):
            stream_id = draw(st.sampled_from(sending))
            frames.append(window(stream_id, 0, Flag.FIN if op == "fin" else Flag.RST))
            (finished if op == "fin" else reset).add(stream_id)
        elif op == "window":
            frames.append(window(draw(st.sampled_from(alive)), draw(st.integers(1, MIB))))
        elif op == "ping":
            frames.append(ping(draw(u32)))  # an answer (ACK) only comes for a ping we sent
        else:
            frames.append(data(first_id + 10_000, draw(payloads(1000))))
    if draw(st.booleans()):
        frames.append(go_away(GoAwayCode.NORMAL))
    return b"".join(frames)


#: (first stream ID of the sender, its traffic): from a client (odd IDs) or a server (even IDs)
traffic = st.sampled_from([1, 2]).flatmap(
    lambda first: st.tuples(st.just(first), peer_traffic(first))
)


@SETTINGS
@given(traffic, st.lists(st.integers(0, 2**20), max_size=60), st.booleans())
def test_events_do_not_depend_on_how_input_is_split(traffic, cuts, bytewise):
    first_id, blob = traffic
    whole = Connection(client=first_id == 2, clock=lambda: 0.0)
    pieces = Connection(client=first_id == 2, clock=lambda: 0.0)
    if bytewise and len(blob) < 5000:
        chunks = [blob[i : i + 1] for i in range(len(blob))]
    else:
        chunks = split(blob, cuts)
    expected = feed(whole, [blob])
    assert feed(pieces, chunks) == expected
    assert pieces.data_to_send() == whole.data_to_send()
    check_event_order(expected)


# ---- (b) malformed input: RemoteProtocolError and a GoAway, nothing else ------------------------


@st.composite
def noisy_frame(draw) -> bytes:
    version = draw(st.just(0) | st.integers(0, 255))
    type = draw(st.integers(0, 3) | st.integers(0, 255))
    flags = draw(st.integers(0, 15) | st.integers(0, 0xFFFF))
    stream_id = draw(st.integers(0, 8) | u32)
    edges = [0, 1, 100, INITIAL_WINDOW, INITIAL_WINDOW + 1, 2**31, 2**32 - 1]
    length = draw(st.sampled_from(edges) | u32)
    payload_size = length if type == FrameType.DATA and length <= 2000 else draw(st.integers(0, 40))
    return raw_header(version, type, flags, stream_id, length) + PATTERN[:payload_size]


valid_frame = st.one_of(
    st.builds(window, st.integers(1, 8), st.integers(0, 1000), st.sampled_from(list(Flag))),
    st.builds(data, st.integers(1, 8), st.binary(max_size=100), st.sampled_from(list(Flag))),
    st.builds(ping, u32, st.sampled_from([Flag.SYN, Flag.ACK])),
)
noise = st.lists(st.one_of(noisy_frame(), valid_frame, st.binary(max_size=30)), max_size=25).map(
    b"".join
)


@SETTINGS
@given(st.booleans(), noise, st.lists(st.integers(0, 2**16), max_size=20))
def test_malformed_input_raises_only_remote_protocol_error(outbound, blob, cuts):
    link = Link()
    link.open()
    conn = link.client if outbound else link.server
    received = []
    try:
        for chunk in split(blob, cuts):
            received += conn.receive_data(chunk)
            if any(isinstance(e, GoAwayReceived) and e.code != GoAwayCode.NORMAL for e in received):
                break  # the peer ended the session
    except RemoteProtocolError as error:
        assert error.code == GoAwayCode.PROTOCOL_ERROR
        assert conn.data_to_send().endswith(go_away(GoAwayCode.PROTOCOL_ERROR))
    else:
        parse_frames(conn.data_to_send())
    check_event_order(merge(received))


# ---- (c) every stream state against every frame -----------------------------------------------


def sweep_frames(type: FrameType, stream_id: int) -> list[bytes]:
    ids = [stream_id, 0, 200, 201]  # the stream, the session, unknown IDs of either parity
    lengths = [0, 1, 100, INITIAL_WINDOW + 1, 2**32 - 1]
    frames = []
    for flags in range(16):
        for target in ids:
            for length in lengths:
                payload = PATTERN[: min(length, 100)] if type == FrameType.DATA else b""
                frames.append(raw_header(0, type, flags, target, length) + payload)
    return frames


@pytest.mark.parametrize("type", list(FrameType), ids=lambda t: t.name)
@pytest.mark.parametrize("outbound", [True, False], ids=["opener", "acceptor"])
@pytest.mark.parametrize("state", STATES)
def test_state_by_frame_sweep(state, outbound, type):
    for frame in sweep_frames(type, stream_in_state(state, outbound=outbound).stream_id):
        scene = stream_in_state(state, outbound=outbound)
        try:
            received = scene.local.receive_data(frame)
        except RemoteProtocolError as error:
            assert error.code == GoAwayCode.PROTOCOL_ERROR, frame.hex()
            assert scene.local.data_to_send().endswith(go_away(error.code)), frame.hex()
        else:
            parse_frames(scene.local.data_to_send())
            check_event_order(scene.history + merge(received))


# ---- flow control holds under any interleaving --------------------------------------------------


@st.composite
def workloads(draw):
    ops = st.one_of(
        st.tuples(st.just("open")),
        st.tuples(st.just("send"), st.integers(0, 7), st.booleans(), st.integers(1, 300_000)),
        st.tuples(st.just("consume"), st.integers(0, 7), st.booleans(), st.integers(1, 300_000)),
        st.tuples(st.just("eof"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("tick"), st.sampled_from([0.0, 0.001, 0.05, 5.0])),
    )
    return draw(st.lists(ops, max_size=40))


@SETTINGS
@given(workloads(), st.sampled_from([Config(), SMALL_BUDGET]))
def test_windows_never_overrun_and_bytes_arrive_in_order(ops, config):
    link = Link(config, config)
    link.client.set_rtt(0.01)
    link.server.set_rtt(0.01)
    ids: list[int] = []
    sent, got, unread = defaultdict(bytearray), defaultdict(bytearray), defaultdict(int)
    closed = set()

    def deliver() -> None:
        for receiver, seen in zip((link.client, link.server), link.pump()):
            for event in seen:
                if isinstance(event, Data):
                    got[receiver, event.stream_id] += event.data
                    unread[receiver, event.stream_id] += len(event.data)

    for op, *args in ops:
        if op == "open":
            ids.append(link.open())
        elif op == "tick":
            link.clock.now += args[0]
        elif ids:
            stream_id = ids[args[0] % len(ids)]
            sender, receiver = (link.client, link.server) if args[1] else (link.server, link.client)
            if op == "send" and (sender, stream_id) not in closed:
                chunk = PATTERN[len(sent[receiver, stream_id]) % 251 :][: args[2] % 100_000]
                accepted = sender.send_data(stream_id, chunk)
                assert 0 <= accepted <= len(chunk)
                sent[receiver, stream_id] += chunk[:accepted]
            elif op == "consume":
                amount = min(args[2], unread[receiver, stream_id])
                unread[receiver, stream_id] -= amount
                receiver.consumed(stream_id, amount)
            elif op == "eof" and (sender, stream_id) not in closed:
                sender.send_eof(stream_id)
                closed.add((sender, stream_id))
        deliver()
    for stream_id in ids:
        for sender in (link.client, link.server):
            if {(link.client, stream_id), (link.server, stream_id)} - closed:
                assert sender.send_window(stream_id) <= config.max_stream_window
    assert {k: bytes(v) for k, v in got.items() if v} == {k: bytes(v) for k, v in sent.items() if v}
