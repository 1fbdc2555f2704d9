# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The sans-IO core: two Connections wired back to back, or one fed frames by hand."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux.config import Config
from mux.connection import Connection
from mux.errors import LocalProtocolError, RemoteProtocolError
from mux.events import (
    DataReceived,
    GoAwayReceived,
    PingAcknowledged,
    PingReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from mux.frames import Flag, FrameType, GoAwayCode

from .mux_support import (
    FIXED_WINDOW,
    INITIAL_WINDOW,
    KIB,
    MIB,
    Data,
    Link,
    data,
    go_away,
    merge,
    parse_frames,
    ping,
    pong,
    stream_in_state,
    window,
)

SYN_1 = bytes.fromhex("000100010000000100000000")
ACK_1 = bytes.fromhex("000100020000000100000000")
FIN_1 = bytes.fromhex("000100040000000100000000")
LIVE_STATES = ("opening", "open", "half_closed_local", "half_closed_remote")


def test_config_defaults_speak_like_hashicorp():
    config = Config()
    assert (config.accept_backlog, config.keepalive_interval, config.ping_timeout) == (
        256,
        30.0,
        10.0,
    )
    assert (config.max_stream_window, config.max_frame_size) == (16 * MIB, 256 * KIB)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.accept_backlog = 1


def test_stream_ids_follow_the_role():
    client, server = Connection(client=True), Connection(client=False)
    assert [client.open_stream() for _ in range(4)] == [1, 3, 5, 7]
    assert [server.open_stream() for _ in range(4)] == [2, 4, 6, 8]


def test_open_and_accept_on_the_wire():
    client, server = Connection(client=True), Connection(client=False)
    assert client.open_stream() == 1
    assert client.data_to_send() == SYN_1
    assert server.receive_data(SYN_1) == [StreamOpened(1)]
    assert server.data_to_send() == b""  # the ACK waits for the application
    server.accept_stream(1)
    assert server.data_to_send() == ACK_1
    assert client.receive_data(ACK_1) == [StreamAccepted(1)]


def test_syns_may_arrive_out_of_order():
    # Go allocates IDs atomically but writes SYNs from concurrent OpenStream calls in any order.
    server = Connection(client=False)
    assert server.receive_data(window(3, flags=Flag.SYN) + window(1, flags=Flag.SYN)) == [
        StreamOpened(3),
        StreamOpened(1),
    ]


def test_peer_may_open_with_data_syn():
    server = Connection(client=False)
    events = server.receive_data(data(1, b"hello", Flag.SYN))
    assert merge(events) == [StreamOpened(1), Data(1, b"hello")]


def test_first_data_carries_the_syn():
    client = Connection(client=True)
    assert client.open_stream() == 1
    assert client.send_data(1, b"request") == 7
    assert client.send_data(1, b"more") == 4
    assert client.data_to_send() == data(1, b"request", Flag.SYN) + data(1, b"more")


@pytest.mark.parametrize("between", ["flushed", "another control frame"])
def test_the_syn_goes_alone_once_it_is_not_the_last_frame_queued(between):
    client = Connection(client=True)
    client.open_stream()
    if between == "flushed":
        assert client.data_to_send() == SYN_1
        expected = data(1, b"x")
    else:
        client.send_ping(7)
        expected = SYN_1 + ping(7) + data(1, b"x")
    client.send_data(1, b"x")
    assert client.data_to_send() == expected


def test_a_second_stream_keeps_the_first_ones_syn_apart():
    client = Connection(client=True)
    client.open_stream()
    client.open_stream()
    client.send_data(1, b"a")
    client.send_data(3, b"b")
    assert client.data_to_send() == SYN_1 + data(1, b"a") + data(3, b"b", Flag.SYN)


def test_a_fin_right_after_the_open_carries_the_syn():
    client = Connection(client=True)
    client.open_stream()
    client.send_eof(1)
    assert client.data_to_send() == window(1, flags=Flag.SYN | Flag.FIN)


def test_a_reset_right_after_the_open_leaves_the_syn_alone():
    client = Connection(client=True)
    client.open_stream()
    client.reset_stream(1)
    assert client.data_to_send() == SYN_1 + window(1, flags=Flag.RST)


@pytest.mark.parametrize("first", ["data", "fin", "rst", "window update"])
def test_a_deferred_ack_rides_on_the_streams_first_frame(first):
    link = Link()
    stream_id = link.client.open_stream()
    link.client.send_data(stream_id, bytes(INITIAL_WINDOW))
    assert link.pump()[1][0] == StreamOpened(stream_id)
    link.server.accept_stream(stream_id, defer_ack=True)
    assert link.server.data_to_send() == b""  # no frame of its own
    if first == "data":
        link.server.send_data(stream_id, b"reply")
        expected = data(stream_id, b"reply", Flag.ACK)
    elif first == "fin":
        link.server.send_eof(stream_id)
        expected = window(stream_id, flags=Flag.ACK | Flag.FIN)
    elif first == "rst":
        link.server.reset_stream(stream_id)
        expected = window(stream_id, flags=Flag.ACK | Flag.RST)
    else:
        link.server.consumed(stream_id, INITIAL_WINDOW)
        expected = window(stream_id, INITIAL_WINDOW, Flag.ACK)
    sent = link.server.data_to_send()
    assert sent == expected
    answer = StreamReset(stream_id) if first == "rst" else StreamAccepted(stream_id)
    assert link.client.receive_data(sent)[0] == answer
    assert link.client.unacknowledged_streams == 0
    if first in ("data", "window update"):  # only the first frame carries it
        link.server.send_data(stream_id, b"later")
        assert link.server.data_to_send() == data(stream_id, b"later")


def test_opening_with_a_larger_window_grants_send_window():
    # hashicorp with MaxStreamWindowSize = 1 MiB announces the extra 768 KiB in its SYN
    server = Connection(client=False)
    assert server.receive_data(bytes.fromhex("0001000100000001000c0000")) == [
        StreamOpened(1),
        WindowUpdated(1, 786432),
    ]
    assert server.send_window(1) == MIB


def test_data_flows_before_the_ack(link):
    stream_id = link.client.open_stream()
    assert link.client.send_data(stream_id, b"early") == 5
    assert link.pump() == ([], [StreamOpened(stream_id), Data(stream_id, b"early")])


def test_data_both_ways(link):
    stream_id = link.open()
    assert link.client.send_data(stream_id, b"question") == 8
    assert link.server.send_data(stream_id, b"answer") == 6
    assert link.pump() == ([Data(stream_id, b"answer")], [Data(stream_id, b"question")])


def test_received_data_is_a_memoryview(link):
    stream_id = link.open()
    link.client.send_data(stream_id, b"abc")
    [event] = link.server.receive_data(link.client.data_to_send())
    assert isinstance(event, DataReceived) and isinstance(event.data, memoryview)


def test_streams_are_multiplexed(link):
    ids = [link.open() for _ in range(5)]
    for stream_id in ids:
        link.client.send_data(stream_id, b"to %d" % stream_id)
    _, seen = link.pump()
    assert sorted(seen) == sorted(Data(i, b"to %d" % i) for i in ids)


@pytest.mark.parametrize("max_frame_size", [1, 1000, 16 * KIB, 64 * KIB])
def test_data_is_split_at_max_frame_size(max_frame_size):
    link = Link(client_config=Config(max_frame_size=max_frame_size))
    stream_id = link.open()
    payload = bytes(range(256)) * 100 if max_frame_size > 1 else b"tiny"
    assert link.client.send_data(stream_id, payload) == len(payload)
    wire = link.client.data_to_send()
    frames = parse_frames(wire)
    assert all(h.type == FrameType.DATA and 0 < h.length <= max_frame_size for h, _ in frames)
    assert b"".join(payload for _, payload in frames) == payload
    assert merge(link.server.receive_data(wire)) == [Data(stream_id, payload)]


# ---- flow control ---------------------------------------------------------------------------


def test_send_window_limits_what_is_queued():
    link = Link(FIXED_WINDOW, FIXED_WINDOW)
    stream_id = link.open()
    assert link.client.send_window(stream_id) == INITIAL_WINDOW
    assert link.client.send_data(stream_id, bytes(INITIAL_WINDOW + 1000)) == INITIAL_WINDOW
    assert link.client.send_window(stream_id) == 0
    assert link.client.send_data(stream_id, b"more") == 0
    assert link.pump() == ([], [Data(stream_id, bytes(INITIAL_WINDOW))])


def test_window_update_once_half_the_window_is_consumed():
    link = Link(FIXED_WINDOW, FIXED_WINDOW)
    stream_id = link.open()
    half = INITIAL_WINDOW // 2
    link.client.send_data(stream_id, bytes(INITIAL_WINDOW))
    link.pump()
    link.server.consumed(stream_id, half - 1)
    assert link.server.data_to_send() == b""
    link.server.consumed(stream_id, 1)
    assert link.server.data_to_send() == window(stream_id, half)
    assert link.client.receive_data(window(stream_id, half)) == [WindowUpdated(stream_id, half)]
    assert link.client.send_window(stream_id) == half


def test_captured_data_and_window_update():
    config = Config(max_stream_window=INITIAL_WINDOW, max_frame_size=INITIAL_WINDOW)
    link = Link(config, config)
    stream_id = link.open()
    payload = bytes(range(250)) * 560
    assert link.client.send_data(stream_id, payload) == 140000
    wire = link.client.data_to_send()
    assert wire == bytes.fromhex("0000000000000001000222e0") + payload
    assert merge(link.server.receive_data(wire)) == [Data(stream_id, payload)]
    link.server.consumed(stream_id, 140000)
    assert link.server.data_to_send() == bytes.fromhex("0001000000000001000222e0")


def bulk_transfer(link: Link, stream_id: int, rounds: int, tick: float) -> list[int]:
    """Fill the send window, deliver, consume everything; return the window seen each round."""
    credits = []
    for _ in range(rounds):
        credit = link.client.send_window(stream_id)
        credits.append(credit)
        assert link.client.send_data(stream_id, bytes(credit)) == credit
        _, seen = link.pump()
        link.server.consumed(stream_id, sum(len(e.data) for e in seen))
        link.pump()
        link.clock.now += tick
    return credits


@pytest.mark.parametrize(
    ("max_window", "budget", "ceiling"),
    [
        (INITIAL_WINDOW, 256 * MIB, INITIAL_WINDOW),
        (2 * MIB, 256 * MIB, 2 * MIB),
        (16 * MIB, MIB, INITIAL_WINDOW + MIB),  # the budget bounds growth beyond the initial window
    ],
)
def test_window_grows_when_updates_come_within_a_few_rtts(max_window, budget, ceiling):
    config = Config(max_stream_window=max_window, session_receive_budget=budget)
    link = Link(config, config)
    link.client.set_rtt(0.1)
    link.server.set_rtt(0.1)
    stream_id = link.open()
    credits = bulk_transfer(link, stream_id, rounds=8, tick=0.001)
    assert credits[0] == INITIAL_WINDOW
    assert max(credits) == ceiling
    assert all(c <= ceiling for c in credits)


@pytest.mark.parametrize("finish", ["fin", "rst"])
def test_a_finished_stream_gives_its_window_growth_back(finish):
    config = Config(max_stream_window=4 * MIB, session_receive_budget=MIB)
    link = Link(config, config)
    link.server.set_rtt(0.1)
    first = link.open()
    assert max(bulk_transfer(link, first, rounds=6, tick=0.001)) == INITIAL_WINDOW + MIB
    if finish == "fin":
        link.client.send_eof(first)
        link.server.send_eof(first)
    else:
        link.server.reset_stream(first)
    link.pump()
    second = link.open()
    assert max(bulk_transfer(link, second, rounds=6, tick=0.001)) == INITIAL_WINDOW + MIB


def test_window_stays_put_when_updates_are_far_apart():
    link = Link()
    link.server.set_rtt(0.01)
    stream_id = link.open()
    link.clock.now = 100.0
    assert set(bulk_transfer(link, stream_id, rounds=5, tick=10.0)) == {INITIAL_WINDOW}


# ---- FIN and RST ----------------------------------------------------------------------------


def test_fin_half_closes_one_direction(link):
    stream_id = link.open()
    link.client.send_eof(stream_id)
    assert link.client.data_to_send() == FIN_1
    assert link.server.receive_data(FIN_1) == [StreamEnded(stream_id)]
    with pytest.raises(LocalProtocolError):
        link.client.send_data(stream_id, b"after eof")
    assert link.server.send_data(stream_id, b"reply") == 5
    assert link.pump() == ([Data(stream_id, b"reply")], [])
    link.server.send_eof(stream_id)
    assert link.pump() == ([StreamEnded(stream_id, closed=True)], [])
    assert link.client.stream_state(stream_id) is None
    for conn in (link.client, link.server):
        with pytest.raises(LocalProtocolError):
            conn.send_data(stream_id, b"closed")


def test_a_repeated_fin_is_not_reported_again(link):
    stream_id = link.open()
    link.server.send_eof(stream_id)
    assert link.pump() == ([StreamEnded(stream_id)], [])
    try:
        repeated = link.client.receive_data(FIN_1)
    except RemoteProtocolError:
        pass  # hashicorp's answer: an unexpected FIN is a protocol error
    else:
        assert repeated == []


@pytest.mark.parametrize("state", LIVE_STATES)
@pytest.mark.parametrize("outbound", [True, False], ids=["opener", "acceptor"])
def test_reset_in_every_live_state(state, outbound):
    scene = stream_in_state(state, outbound=outbound)
    scene.local.reset_stream(scene.stream_id)
    rst = scene.local.data_to_send()
    assert rst == window(scene.stream_id, flags=Flag.RST)
    assert scene.peer.receive_data(rst) == [StreamReset(scene.stream_id)]
    for conn in (scene.local, scene.peer):
        with pytest.raises(LocalProtocolError):
            conn.send_data(scene.stream_id, b"x")


@pytest.mark.parametrize("state", ["closed", "reset_local", "reset_remote"])
@pytest.mark.parametrize("outbound", [True, False], ids=["opener", "acceptor"])
def test_late_frames_for_a_finished_stream_are_ignored(state, outbound):
    scene = stream_in_state(state, outbound=outbound)
    stream_id = scene.stream_id
    late = data(stream_id, b"late") + window(stream_id, 10) + window(stream_id, 0, Flag.FIN)
    assert scene.local.receive_data(late + ping(5)) == [PingReceived(5)]
    assert scene.local.data_to_send() == pong(5)


def test_data_in_flight_when_resetting_is_dropped(link):
    stream_id = link.open()
    link.server.send_data(stream_id, b"in flight")
    in_flight = link.server.data_to_send()
    link.client.reset_stream(stream_id)
    assert link.client.receive_data(in_flight) == []


# ---- ping, GoAway, unknown streams ----------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ping_is_echoed_with_its_opaque_value(opaque):
    server = Connection(client=False)
    assert server.receive_data(ping(opaque)) == [PingReceived(opaque)]
    assert server.data_to_send() == pong(opaque)


def test_ping_round_trip(link):
    link.client.send_ping(0xDEADBEEF)
    assert link.client.data_to_send() == ping(0xDEADBEEF)
    assert link.server.receive_data(ping(0xDEADBEEF)) == [PingReceived(0xDEADBEEF)]
    assert link.client.receive_data(link.server.data_to_send()) == [PingAcknowledged(0xDEADBEEF)]


def test_go_away_normal_stops_new_streams_only(link):
    stream_id = link.open()
    link.server.go_away()
    assert link.server.data_to_send() == go_away(GoAwayCode.NORMAL)
    assert link.client.receive_data(go_away(GoAwayCode.NORMAL)) == [GoAwayReceived(0)]
    with pytest.raises(LocalProtocolError):
        link.client.open_stream()
    # a SYN that crossed the GoAway is refused with RST, not an error
    assert link.server.receive_data(window(3, flags=Flag.SYN)) == []
    assert link.server.data_to_send() == window(3, flags=Flag.RST)
    # the existing stream goes on both ways
    link.client.send_data(stream_id, b"still")
    link.server.send_data(stream_id, b"here")
    assert link.pump() == ([Data(stream_id, b"here")], [Data(stream_id, b"still")])


@pytest.mark.parametrize("code", list(GoAwayCode))
def test_go_away_codes_are_reported(code):
    sender, receiver = Connection(client=True), Connection(client=False)
    sender.go_away(code)
    assert sender.data_to_send() == go_away(code)
    assert receiver.receive_data(go_away(code)) == [GoAwayReceived(code)]


@pytest.mark.parametrize(
    "frame",
    [
        data(99, b"abcde"),
        data(100, b"abcde"),
        data(99, b"", Flag.ACK),
        window(99, 1000),
        window(100, 1000, Flag.ACK),
        window(99, 0, Flag.FIN),
        window(99, 0, Flag.RST),
    ],
)
def test_frames_for_unknown_streams_are_ignored(frame):
    server = Connection(client=False)
    assert server.receive_data(frame + ping(7)) == [PingReceived(7)]
    assert server.data_to_send() == pong(7)


# ---- protocol errors ------------------------------------------------------------------------


def assert_torn_down(conn: Connection, frames: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as error:
        conn.receive_data(frames)
    assert error.value.code == GoAwayCode.PROTOCOL_ERROR
    assert conn.data_to_send().endswith(go_away(GoAwayCode.PROTOCOL_ERROR))


@pytest.mark.parametrize(
    "sizes", [[INITIAL_WINDOW + 1], [INITIAL_WINDOW, 1], [1000, INITIAL_WINDOW - 1000, 1]]
)
def test_data_beyond_the_window_tears_the_session_down(sizes):
    frames = window(1, flags=Flag.SYN) + b"".join(data(1, bytes(n)) for n in sizes)
    assert_torn_down(Connection(client=False), frames)


def test_data_syn_beyond_the_window_tears_the_session_down():
    assert_torn_down(Connection(client=False), data(1, bytes(INITIAL_WINDOW + 1), Flag.SYN))


def test_data_filling_the_window_exactly_is_fine():
    server = Connection(client=False)
    events = server.receive_data(data(1, bytes(INITIAL_WINDOW), Flag.SYN))
    assert merge(events) == [StreamOpened(1), Data(1, bytes(INITIAL_WINDOW))]


@pytest.mark.parametrize(
    ("client", "frames"),
    [
        pytest.param(False, window(2, flags=Flag.SYN), id="server-parity-syn-to-server"),
        pytest.param(True, window(1, flags=Flag.SYN), id="client-parity-syn-to-client"),
        pytest.param(False, window(1, flags=Flag.SYN) * 2, id="reused-id"),
        pytest.param(False, data(1, b"x", Flag.SYN) + data(1, b"y", Flag.SYN), id="reused-id-data"),
    ],
)
def test_bad_syn_tears_the_session_down(client, frames):
    assert_torn_down(Connection(client=client), frames)


@pytest.mark.parametrize("version", [1, 255])
def test_bad_version_tears_the_session_down(version):
    assert_torn_down(Connection(client=False), bytes([version]) + ping()[1:])


# ---- inbound limits -------------------------------------------------------------------------


@pytest.mark.parametrize("finish", ["fin", "local_rst", "peer_rst"])
def test_inbound_streams_beyond_the_limit_get_rst(finish):
    link = Link(server_config=Config(max_inbound_streams=2))
    first, _ = link.open(), link.open()
    third = link.client.open_stream()
    assert link.server.receive_data(link.client.data_to_send()) == []
    assert link.server.data_to_send() == window(third, flags=Flag.RST)
    assert link.client.receive_data(window(third, flags=Flag.RST)) == [StreamReset(third)]
    # a finished stream makes room again
    if finish == "fin":
        link.client.send_eof(first)
        link.server.send_eof(first)
    else:
        (link.server if finish == "local_rst" else link.client).reset_stream(first)
    link.pump()
    fourth = link.client.open_stream()
    assert link.pump() == ([], [StreamOpened(fourth)])


def test_unaccepted_streams_beyond_the_backlog_refuse_the_oldest():
    link = Link(server_config=Config(accept_backlog=2))
    ids = [link.client.open_stream() for _ in range(3)]
    opened = [StreamOpened(ids[0]), StreamOpened(ids[1]), StreamReset(ids[0]), StreamOpened(ids[2])]
    assert link.pump() == ([StreamReset(ids[0])], opened)
    assert link.server.streams_awaiting_accept == 2
    link.server.accept_stream(ids[1])
    fourth = link.client.open_stream()
    assert link.pump() == ([StreamAccepted(ids[1])], [StreamOpened(fourth)])
    with pytest.raises(LocalProtocolError):
        link.server.accept_stream(ids[0])
    assert link.server.stream_state(ids[0]) is None


# ---- caller misuse --------------------------------------------------------------------------


def _own_stream(conn: Connection) -> int:
    return conn.open_stream()


def _finished(conn: Connection, how: str) -> int:
    stream_id = conn.open_stream()
    getattr(conn, how)(stream_id)
    return stream_id


MISUSE = {
    "send_data-unknown": lambda c: c.send_data(99, b"x"),
    "send_eof-unknown": lambda c: c.send_eof(99),
    "accept-unknown": lambda c: c.accept_stream(98),
    "accept-own-stream": lambda c: c.accept_stream(_own_stream(c)),
    "send_data-after-eof": lambda c: c.send_data(_finished(c, "send_eof"), b"x"),
    "send_data-after-reset": lambda c: c.send_data(_finished(c, "reset_stream"), b"x"),
    "send_eof-after-reset": lambda c: c.send_eof(_finished(c, "reset_stream")),
}


@pytest.mark.parametrize("misuse", MISUSE.values(), ids=MISUSE.keys())
def test_misuse_raises_local_protocol_error(misuse):
    conn = Connection(client=True)
    with pytest.raises(LocalProtocolError):
        misuse(conn)
