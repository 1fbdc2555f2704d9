# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A peer that tries to make us do unbounded work: floods of pings and SYNs while it reads
slowly or not at all, answers to pings never sent. Sans-IO first, then over Trio."""

from __future__ import annotations

import secrets

import pytest
import trio
import trio.testing

import mux
from mux.config import Config
from mux.connection import Connection
from mux.errors import LocalProtocolError, RemoteProtocolError
from mux.events import PingAcknowledged, PingReceived, StreamOpened, StreamReset
from mux.frames import HEADER_SIZE, Flag, FrameType, GoAwayCode

from .mux_support import (
    INITIAL_WINDOW,
    Link,
    data,
    fields,
    go_away,
    parse_frames,
    ping,
    pong,
    settle,
    window,
)

LIMIT = 1200  # a small control backlog: 100 frames

# ---- sans-IO ----------------------------------------------------------------------------------


def test_a_ping_flood_is_parsed_only_as_fast_as_the_answers_are_taken():
    conn = Connection(client=False, config=Config(max_control_backlog=LIMIT))
    flood = ping(7) * 1000
    events = conn.receive_data(flood)
    assert conn.input_held
    assert len(events) == LIMIT // HEADER_SIZE
    assert LIMIT <= conn.control_output() < LIMIT + HEADER_SIZE
    with pytest.raises(LocalProtocolError, match="held"):
        conn.receive_data(ping(8))
    answered = len(parse_frames(bytes(conn.data_to_send())))
    while conn.input_held:
        events += conn.resume_receiving()
        assert conn.control_output() < LIMIT + HEADER_SIZE
        answered += len(parse_frames(bytes(conn.data_to_send())))
    assert events == [PingReceived(7)] * 1000
    assert answered == 1000
    assert conn.resume_receiving() == []


def test_held_input_resumes_mid_frame_with_data():
    """What is held may start anywhere in a frame: the parser's state carries over."""
    link = Link(server_config=Config(max_control_backlog=LIMIT))
    stream_id = link.open()
    payload = bytes(range(200))
    blob = ping(1) * 100 + data(stream_id, payload) + ping(2)
    events = link.server.receive_data(blob)
    assert link.server.input_held
    link.server.data_to_send()
    events += link.server.resume_receiving()
    assert not link.server.input_held
    received = b"".join(bytes(e.data) for e in events if hasattr(e, "data"))
    assert received == payload
    assert events[-1] == PingReceived(2)


def test_control_frames_overtake_queued_data_but_a_fin_never_does():
    link = Link()
    one, two = link.open(), link.open()
    conn = link.client
    conn.send_data(one, b"a" * 1000)
    conn.send_eof(one)
    conn.send_data(two, b"b" * 10)
    conn.reset_stream(two)
    conn.send_ping(5)
    conn.receive_data(ping(6))
    conn.go_away()
    frames = [fields(header) for header, _ in parse_frames(bytes(conn.data_to_send()))]
    assert frames == [
        (FrameType.WINDOW_UPDATE, Flag.RST, two, 0),
        (FrameType.PING, Flag.SYN, 0, 5),
        (FrameType.PING, Flag.ACK, 0, 6),
        (FrameType.GO_AWAY, 0, 0, GoAwayCode.NORMAL),
        (FrameType.DATA, 0, one, 1000),
        (FrameType.WINDOW_UPDATE, Flag.FIN, one, 0),
        (FrameType.DATA, 0, two, 10),
    ]


def test_a_window_update_overtakes_queued_data():
    link = Link(client_config=Config(max_stream_window=INITIAL_WINDOW))
    stream_id = link.open()
    link.server.send_data(stream_id, bytes(INITIAL_WINDOW))
    link.pump()
    link.client.send_data(stream_id, b"queued")
    link.client.consumed(stream_id, INITIAL_WINDOW)
    frames = [fields(header) for header, _ in parse_frames(bytes(link.client.data_to_send()))]
    assert frames == [
        (FrameType.WINDOW_UPDATE, 0, stream_id, INITIAL_WINDOW),
        (FrameType.DATA, 0, stream_id, 6),
    ]


def test_what_a_write_did_not_take_goes_out_first():
    link = Link()
    stream_id = link.open()
    conn = link.client
    conn.send_data(stream_id, b"x" * 100)
    out = conn.data_to_send()
    conn.unsend(memoryview(out)[50:])  # a partial write: a frame cut in two
    conn.send_ping(9)
    resent = bytes(conn.data_to_send())
    assert resent[:62] == bytes(out[50:]) and resent[62:] == ping(9)


def test_an_answer_to_a_ping_never_sent_ends_the_session():
    conn = Connection(client=True)
    conn.send_ping(41)
    conn.data_to_send()
    assert conn.receive_data(pong(41)) == [PingAcknowledged(41)]
    assert not conn.ping_unanswered(41)
    with pytest.raises(RemoteProtocolError, match="never sent") as info:
        conn.receive_data(pong(41))  # answered already
    assert info.value.code == GoAwayCode.PROTOCOL_ERROR
    assert conn.data_to_send() == go_away(GoAwayCode.PROTOCOL_ERROR)


def test_ping_opaque_values_must_fit_32_bits():
    conn = Connection(client=True)
    for bad in (-1, 2**32):
        with pytest.raises(LocalProtocolError):
            conn.send_ping(bad)
    conn.send_ping(2**32 - 1)
    assert conn.ping_unanswered(2**32 - 1)


def test_a_protocol_violation_found_by_the_adapter_sends_go_away():
    conn = Connection(client=True)
    conn.open_stream()
    conn.data_to_send()
    exc = conn.protocol_violation("too slow")
    assert exc.code == GoAwayCode.PROTOCOL_ERROR
    assert conn.terminated is exc
    assert conn.streams_open == 0
    assert conn.data_to_send() == go_away(GoAwayCode.PROTOCOL_ERROR)
    assert conn.protocol_violation("again") is not exc  # the first one stays the reason
    assert conn.terminated is exc


def test_a_syn_flood_keeps_only_the_newest_streams_waiting():
    backlog = 8
    conn = Connection(client=False, config=Config(accept_backlog=backlog))
    syns = b"".join(window(stream_id, 0, Flag.SYN) for stream_id in range(1, 2001, 2))
    events = conn.receive_data(syns)
    assert conn.streams_awaiting_accept == conn.streams_open == backlog
    opened = [e.stream_id for e in events if isinstance(e, StreamOpened)]
    refused = [e.stream_id for e in events if isinstance(e, StreamReset)]
    assert opened == list(range(1, 2001, 2))
    assert refused == opened[:-backlog]
    rsts = parse_frames(bytes(conn.data_to_send()))
    assert [fields(h) for h, _ in rsts] == [
        (FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0) for stream_id in refused
    ]
    conn.accept_stream(opened[-1])
    assert conn.streams_awaiting_accept == backlog - 1


# ---- over Trio --------------------------------------------------------------------------------


class Flooder:
    """The far end of a lockstep transport: it writes what it is told and reads only when
    asked, so the session's writes block while it does not read."""

    def __init__(self) -> None:
        self.session_side, self.stream = trio.testing.lockstep_stream_pair()

    async def read_all(self) -> list:
        received = bytearray()
        with trio.move_on_after(60):
            while chunk := await self.stream.receive_some():
                received += chunk
        return parse_frames(bytes(received))


async def test_a_peer_that_floods_pings_and_does_not_read_is_cut_off(nursery, autojump_clock):
    config = Config(max_control_backlog=LIMIT, control_backlog_timeout=5.0, write_timeout=60.0)
    peer = Flooder()
    done = trio.Event()

    async def run_session() -> None:
        async with mux.open_session(peer.session_side, client=False, config=config) as session:
            nonlocal server
            server = session
            await done.wait()

    server: mux.Session | None = None
    nursery.start_soon(run_session)

    async def flood() -> None:
        try:
            while True:
                await peer.stream.send_all(ping(secrets.randbits(32)) * 1000)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    nursery.start_soon(flood)
    await trio.sleep(1)
    assert server is not None and not server.closed
    # The reader stopped: the answers queued stay bounded however long the flood goes on.
    assert server._conn.control_output() < LIMIT + HEADER_SIZE
    received_before = server.statistics().bytes_received
    await trio.sleep(1)
    assert server.statistics().bytes_received == received_before
    await trio.sleep(5)
    assert server.closed
    reason = server.close_reason
    assert "did not read our answers to its frames for 5.0 s" in str(reason)
    assert isinstance(reason.__cause__, RemoteProtocolError)
    assert reason.__cause__.code == GoAwayCode.PROTOCOL_ERROR
    frames = await peer.read_all()
    assert fields(frames[-1][0]) == (FrameType.GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR)
    done.set()


async def test_a_pong_for_a_ping_never_sent_ends_the_session(nursery):
    transport, raw = trio.testing.memory_stream_pair()

    async def run(*, task_status):
        async with mux.open_session(transport, client=True) as session:
            task_status.started(session)
            await trio.sleep_forever()

    session = await nursery.start(run)
    await raw.send_all(pong(12345))
    with pytest.raises(mux.SessionClosed, match="ping never sent"):
        await session.accept_stream()


async def test_keepalive_pings_are_unpredictable(nursery, autojump_clock):
    transport, raw = trio.testing.memory_stream_pair()
    config = Config(keepalive_interval=1.0)

    async def run(*, task_status):
        async with mux.open_session(transport, client=True, config=config) as session:
            task_status.started(session)
            await trio.sleep_forever()

    await nursery.start(run)
    opaques = []
    buffer = bytearray()
    while len(opaques) < 4:
        buffer += await raw.receive_some()
        for header, _ in parse_frames(bytes(buffer)):
            assert header.type == FrameType.PING
            opaques.append(header.length)
            await raw.send_all(pong(header.length))
        buffer.clear()
    assert len(set(opaques)) == 4
    assert opaques != sorted(opaques) or opaques[0] > 1000  # not a counter from 0


async def test_a_syn_flood_into_an_application_that_never_accepts_stays_bounded(nursery):
    transport, raw = trio.testing.memory_stream_pair()
    config = Config(accept_backlog=16)

    async def run(*, task_status):
        async with mux.open_session(transport, client=False, config=config) as session:
            task_status.started(session)
            await trio.sleep_forever()

    session = await nursery.start(run)
    for start in range(1, 20_001, 2000):
        await raw.send_all(b"".join(window(i, 0, Flag.SYN) for i in range(start, start + 2000, 2)))
        await settle()
        assert session.streams_open == 16
        assert len(session._accept_queue) == len(session._streams) == 16
    newest = [(await session.accept_stream()).stream_id for _ in range(16)]
    assert newest == list(range(20_001 - 32, 20_001, 2))


async def test_a_peer_that_reads_its_answers_gets_them_all(nursery):
    transport, raw = trio.testing.memory_stream_pair()
    config = Config(max_control_backlog=LIMIT)

    async def run(*, task_status):
        async with mux.open_session(transport, client=False, config=config) as session:
            task_status.started(session)
            await trio.sleep_forever()

    session = await nursery.start(run)
    count = 5000
    nursery.start_soon(raw.send_all, b"".join(ping(i) for i in range(count)))
    buffer = bytearray()
    answers = []
    while len(answers) < count:
        buffer += await raw.receive_some()
        whole = len(buffer) - len(buffer) % HEADER_SIZE
        answers += [h.length for h, _ in parse_frames(bytes(buffer[:whole])) if h.flags & Flag.ACK]
        del buffer[:whole]
    assert answers[-count:] == list(range(count))
    assert not session.closed
