# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The Trio API: sessions and streams over in-memory transports."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
import trio.testing

import mux
from mux.frames import Flag, FrameType

from .mux_support import (
    FIXED_WINDOW,
    INITIAL_WINDOW,
    KIB,
    MIB,
    RawPeer,
    data,
    fields,
    pong,
    receive_all,
    settle,
    stream_pair,
    window,
)

# ---- the generic stream checks ----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["memory", "socket"])
@pytest.mark.parametrize("shared", [True, False], ids=["one-session", "session-per-stream"])
async def test_mux_streams_are_half_closeable_streams(sessions, shared, transport):
    pair = await sessions.open(transport=transport) if shared else None

    async def stream_maker():
        return await stream_pair(*(pair or await sessions.open(transport=transport)))

    async def clogged_stream_maker():
        # Both directions hold exactly one unread window: the next byte waits for the reader.
        left, right = await stream_maker()
        await left.send_all(bytes(INITIAL_WINDOW))
        await right.send_all(bytes(INITIAL_WINDOW))
        return left, right

    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


# ---- data -------------------------------------------------------------------------------------


async def echo_streams(session: mux.Session) -> None:
    async def echo(stream: mux.Stream) -> None:
        async with stream:
            while chunk := await stream.receive_some():
                await stream.send_all(chunk)
            await stream.send_eof()

    async with trio.open_nursery() as nursery:
        async for stream in session:
            nursery.start_soon(echo, stream)


@pytest.mark.parametrize("transport", ["memory", "socket"])
async def test_many_concurrent_streams(sessions, nursery, transport):
    client, server = await sessions.open(transport=transport)
    nursery.start_soon(echo_streams, server)
    count = 200  # within the default accept backlog: a burst beyond it is refused with RST
    rng = random.Random(0)
    payloads = [rng.randbytes(rng.randrange(0, 20_000)) for _ in range(count)]
    echoed = [b""] * count

    async def round_trip(index: int) -> None:
        stream = await client.open_stream()
        async with stream:

            async def send() -> None:
                await stream.send_all(payloads[index])
                await stream.send_eof()

            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                echoed[index] = await receive_all(stream)

    async with trio.open_nursery() as streams:
        for index in range(count):
            streams.start_soon(round_trip, index)
    assert echoed == payloads
    await settle()
    assert client.statistics().streams_opened_total == count
    assert server.statistics().streams_accepted_total == count
    assert client.statistics().streams_open == server.statistics().streams_open == 0


@pytest.mark.parametrize("transport", ["memory", "socket"])
@pytest.mark.parametrize("config", [None, FIXED_WINDOW], ids=["auto-tuned", "fixed-window"])
async def test_large_transfer_both_ways_keeps_every_byte(sessions, config, transport):
    client, server = await sessions.open(config, config, transport=transport)
    left, right = await stream_pair(client, server)
    rng = random.Random(1)
    to_right, to_left = rng.randbytes(4 * MIB), rng.randbytes(4 * MIB)

    async def send(stream: mux.Stream, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            size = rng.randrange(1, 200_000)
            await stream.send_all(view[:size])
            view = view[size:]
        await stream.send_eof()

    async def receive(stream: mux.Stream, payload: bytes) -> None:
        digest = hashlib.sha256()
        while chunk := await stream.receive_some(rng.choice([None, 1000, 70_000])):
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, left, to_right)
        nursery.start_soon(send, right, to_left)
        nursery.start_soon(receive, right, to_right)
        nursery.start_soon(receive, left, to_left)
    await settle()
    statistics = client.statistics()
    assert statistics.bytes_sent == server.statistics().bytes_received > len(to_right)
    assert statistics.bytes_received == server.statistics().bytes_sent > len(to_left)


# ---- half-close, close and reset --------------------------------------------------------------


@pytest.mark.parametrize("client_first", [True, False], ids=["client-first", "server-first"])
async def test_half_close_either_way(sessions, client_first):
    opened, accepted = await stream_pair(*await sessions.open())
    first, second = (opened, accepted) if client_first else (accepted, opened)
    await first.send_all(b"request")
    await first.send_eof()
    assert await receive_all(second) == b"request"
    with pytest.raises(trio.ClosedResourceError):
        await first.send_all(b"more")
    await second.send_all(b"reply after eof")
    await second.send_eof()
    assert await receive_all(first) == b"reply after eof"


async def test_aclose_after_the_peer_finished_is_graceful(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await opened.send_all(b"bye")
    await opened.send_eof()
    assert await receive_all(accepted) == b"bye"
    await accepted.send_all(b"bye too")
    await accepted.aclose()
    assert await receive_all(opened) == b"bye too"


async def test_aclose_while_the_peer_still_sends_resets(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await opened.send_all(b"unread")
    await accepted.aclose()
    await settle()
    with pytest.raises(mux.StreamReset):
        await opened.send_all(b"more")
    with pytest.raises(mux.StreamReset):
        await opened.receive_some()


async def test_aclose_before_the_peer_finished_resets_what_it_sends(sessions):
    # As with TCP's close(): the peer reads to the end (trio's stream contract: data sent
    # before a graceful close is not lost), and whatever it still sends is refused.
    opened, accepted = await stream_pair(*await sessions.open())
    await accepted.send_all(b"last words")
    await accepted.aclose()
    await settle()
    assert await opened.receive_some() == b"last words"
    assert await opened.receive_some() == b""
    with pytest.raises(mux.StreamReset):
        for _ in range(10):
            await opened.send_all(b"unwanted")
            await settle()


async def test_aclose_with_unread_data_resets_at_once(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await opened.send_all(b"never read")
    await settle()
    await accepted.aclose()
    await settle()
    with pytest.raises(mux.StreamReset):
        await opened.receive_some()


async def test_reset_fails_both_ends_at_once_even_with_buffered_data(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await opened.send_all(b"buffered")
    await settle()
    opened.reset()
    with pytest.raises(trio.ClosedResourceError):
        await opened.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await opened.receive_some()
    await settle()
    with pytest.raises(mux.StreamReset):
        await accepted.receive_some()
    with pytest.raises(mux.StreamReset):
        await accepted.send_all(b"x")
    assert issubclass(mux.StreamReset, trio.BrokenResourceError)


async def test_reset_wakes_blocked_receiver_and_sender(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await accepted.send_all(bytes(INITIAL_WINDOW))  # the next send waits for a window update

    async def expect_reset(operation, *args):
        with pytest.raises(mux.StreamReset):
            await operation(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expect_reset, accepted.receive_some)
        nursery.start_soon(expect_reset, accepted.send_all, b"blocked")
        await settle()
        opened.reset()


async def test_a_stream_reset_before_accept_does_not_upset_accepting(sessions):
    client, server = await sessions.open()
    doomed = await client.open_stream()
    await doomed.send_all(b"never read")
    await settle()
    doomed.reset()
    healthy = await client.open_stream()
    await settle()
    accepted = await server.accept_stream()
    if accepted.stream_id == doomed.stream_id:
        with pytest.raises(mux.StreamReset):
            await accepted.receive_some()
        accepted = await server.accept_stream()
    assert accepted.stream_id == healthy.stream_id
    await healthy.send_all(b"fine")
    assert await accepted.receive_some() == b"fine"


# ---- session ----------------------------------------------------------------------------------


async def test_ping_measures_a_positive_rtt(sessions):
    client, server = await sessions.open()
    for session in (client, server):
        rtt = await session.ping()
        assert rtt > 0
        assert session.statistics().rtt > 0


async def test_go_away_stops_new_streams_only(sessions):
    client, server = await sessions.open()
    opened, accepted = await stream_pair(client, server)
    await client.go_away()
    await settle()
    with pytest.raises(mux.RemoteGoAway):
        await server.open_stream()
    with pytest.raises(mux.SessionClosed):
        await client.open_stream()
    assert not client.closed and not server.closed
    await opened.send_all(b"still")
    assert await accepted.receive_some() == b"still"
    await accepted.send_all(b"here")
    assert await opened.receive_some() == b"here"
    assert issubclass(mux.RemoteGoAway, mux.SessionClosed)


async def test_closing_a_session_breaks_its_streams_on_both_ends(sessions):
    client, server = await sessions.open()
    opened, accepted = await stream_pair(client, server)

    async def accept_expecting_closed():
        with pytest.raises(mux.SessionClosed):
            await server.accept_stream()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_expecting_closed)
        await settle()
        await client.aclose()
    assert client.closed and server.closed
    for stream in (opened, accepted):
        with pytest.raises(mux.SessionClosed):
            await stream.send_all(b"x")
        with pytest.raises(mux.SessionClosed):
            await stream.receive_some()
    for session in (client, server):
        for operation in (
            session.open_stream,
            session.accept_stream,
            session.ping,
            session.go_away,
        ):
            with pytest.raises(mux.SessionClosed):
                await operation()
    await client.aclose()  # closing twice is fine


async def test_wait_streams_closed_wakes_when_the_last_stream_closes(sessions):
    client, server = await sessions.open()
    await client.wait_streams_closed()  # none open: at once
    pairs = [await stream_pair(client, server) for _ in range(2)]
    done: list[str] = []

    async def wait(name: str, session: mux.Session) -> None:
        await session.wait_streams_closed()
        done.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "client", client)
        nursery.start_soon(wait, "server", server)
        await settle()
        await pairs[0][0].aclose()  # a graceful close takes both halves
        await pairs[0][1].aclose()
        await settle()
        assert done == [] and client.streams_open == server.streams_open == 1
        pairs[1][1].reset()  # the last one: both ends wake
        await settle()
        assert sorted(done) == ["client", "server"]


async def test_wait_streams_closed_returns_when_the_session_ends(sessions):
    client, server = await sessions.open()
    await stream_pair(client, server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.wait_streams_closed)
        await settle()
        await client.aclose()
    assert server.closed


async def test_iterating_a_session_ends_with_it(sessions, nursery):
    client, server = await sessions.open()
    ids = [(await client.open_stream()).stream_id for _ in range(3)]
    accepted = []
    async for stream in server:
        accepted.append(stream.stream_id)
        if len(accepted) == len(ids):
            # Closed once all were taken: closed sooner, the server's ACK of a stream may
            # meet the closed transport before it has read the next SYN (the connection is
            # lost then, as over TCP).
            nursery.start_soon(client.aclose)
    assert accepted == ids


async def test_streams_opened_before_the_session_ended_are_still_handed_out(nursery):
    transport, peer = RawPeer.connect(nursery)
    async with mux.open_session(transport, client=False) as server:
        # Three opens, data on the last, and the end of the connection, in one read.
        frames = [window(1, flags=Flag.SYN), window(3, flags=Flag.SYN), window(5, flags=Flag.SYN)]
        await peer.send(*frames, data(5, b"last words"))
        await peer.stream.send_eof()
        streams = [stream async for stream in server]
        assert [stream.stream_id for stream in streams] == [1, 3, 5]
        assert await streams[2].receive_some() == b"last words"


async def test_leaving_open_session_closes_session_and_streams():
    left, right = trio.testing.memory_stream_pair()
    async with mux.open_session(right, client=False) as server:
        async with mux.open_session(left, client=True) as client:
            opened, accepted = await stream_pair(client, server)
        assert client.closed
        with pytest.raises(mux.SessionClosed):
            await opened.send_all(b"x")
        with pytest.raises(mux.SessionClosed):
            await accepted.receive_some()
        assert server.closed


async def test_streams_beyond_the_accept_backlog_are_reset(sessions):
    client, server = await sessions.open(server_config=mux.Config(accept_backlog=2))
    streams = [await client.open_stream() for _ in range(3)]
    await settle()
    # The stream that waited longest is refused.
    with pytest.raises(mux.StreamReset):
        await streams[0].send_all(b"refused")
    with pytest.raises(mux.StreamReset):
        await streams[0].receive_some()
    for stream in streams[1:]:
        await stream.send_all(b"queued %d" % stream.stream_id)
        accepted = await server.accept_stream()
        assert accepted.stream_id == stream.stream_id
        assert await accepted.receive_some() == b"queued %d" % stream.stream_id


class SlowLink(trio.abc.Stream):
    """A transport that delivers what it is given steadily, 16 KiB every 0.125 s."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            await trio.sleep(0.125)
            await self.inner.send_all(view[: 16 * KIB])
            view = view[16 * KIB :]

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_slow_but_steady_link_keeps_the_session(autojump_clock):
    # Any one frame (64 KiB) goes out in 0.5 s, well within write_timeout; a whole window does not.
    left, right = trio.testing.memory_stream_pair()
    config = mux.Config(write_timeout=1.0)
    payload = bytes(range(256)) * 4096
    async with (
        mux.open_session(SlowLink(left), client=True, config=config) as client,
        mux.open_session(right, client=False, config=config) as server,
    ):
        opened, accepted = await stream_pair(client, server)

        async def send() -> None:
            await opened.send_all(payload)
            await opened.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            assert await receive_all(accepted) == payload
        assert not client.closed


# ---- against a peer that speaks raw frames ----------------------------------------------------


async def test_server_session_on_the_wire(nursery):
    transport, peer = RawPeer.connect(nursery)
    async with mux.open_session(transport, client=False) as session:
        await peer.send(window(1, flags=Flag.SYN), data(1, b"hello"))
        stream = await session.accept_stream()
        assert stream.stream_id == 1
        assert await stream.receive_some() == b"hello"
        assert fields((await peer.next_frame())[0]) == (FrameType.WINDOW_UPDATE, Flag.ACK, 1, 0)
        await stream.send_all(b"world")
        header, payload = await peer.next_frame()
        assert (fields(header), payload) == ((FrameType.DATA, 0, 1, 5), b"world")
        await peer.send(window(1, flags=Flag.FIN))
        assert await stream.receive_some() == b""


async def test_client_session_on_the_wire(nursery):
    transport, peer = RawPeer.connect(nursery)
    async with mux.open_session(transport, client=True) as session:
        stream = await session.open_stream()
        assert fields((await peer.next_frame())[0]) == (FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        assert await session.ping() > 0
        await peer.send(window(1, flags=Flag.ACK), data(1, b"early reply"))
        assert await stream.receive_some() == b"early reply"


async def test_peer_closing_the_transport_ends_the_session(nursery):
    transport, peer = RawPeer.connect(nursery)
    async with mux.open_session(transport, client=False) as session:
        await peer.send(window(1, flags=Flag.SYN), data(1, b"last words"))
        stream = await session.accept_stream()
        await peer.stream.aclose()
        assert [s async for s in session] == []
        assert session.closed
        assert await stream.receive_some() == b"last words"
        with pytest.raises(mux.SessionClosed):
            await stream.receive_some()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(
            window(1, flags=Flag.SYN) + data(1, bytes(INITIAL_WINDOW + 1)), id="window-overrun"
        ),
        pytest.param(window(2, flags=Flag.SYN), id="syn-with-our-parity"),
        pytest.param(bytes.fromhex("010200010000000000000000"), id="bad-version"),
    ],
)
async def test_protocol_error_sends_go_away_and_ends_the_session(nursery, frames):
    transport, peer = RawPeer.connect(nursery)
    async with mux.open_session(transport, client=False) as session:
        await peer.send(frames)
        header, _ = await peer.next_frame_of(FrameType.GO_AWAY)
        assert header.length == mux.GoAwayCode.PROTOCOL_ERROR
        with pytest.raises(mux.SessionClosed):
            await session.accept_stream()
        assert session.closed
        with pytest.raises(EOFError):
            await peer.next_frame()


async def test_unacknowledged_stream_open_times_out(nursery):
    transport, peer = RawPeer.connect(nursery)
    config = mux.Config(stream_open_timeout=0.3)
    async with mux.open_session(transport, client=True, config=config) as session:
        stream = await session.open_stream()
        assert fields((await peer.next_frame())[0]) == (FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        with pytest.raises(mux.StreamReset):
            await stream.receive_some()
        assert fields((await peer.next_frame())[0]) == (FrameType.WINDOW_UPDATE, Flag.RST, 1, 0)
        assert not session.closed


async def test_acknowledged_stream_outlives_the_open_timeout(nursery):
    transport, peer = RawPeer.connect(nursery)
    config = mux.Config(stream_open_timeout=0.2)
    async with mux.open_session(transport, client=True, config=config) as session:
        stream = await session.open_stream()
        await peer.send(window(1, flags=Flag.ACK))
        await trio.sleep(0.5)
        await peer.send(data(1, b"still open"))
        assert await stream.receive_some() == b"still open"


async def test_keepalive_ends_a_session_whose_peer_stopped_answering(nursery):
    transport, peer = RawPeer.connect(nursery, answer_pings=False)
    config = mux.Config(keepalive_interval=0.2, ping_timeout=0.2)
    async with mux.open_session(transport, client=True, config=config) as session:
        stream = await session.open_stream()
        header, _ = await peer.next_frame_of(FrameType.PING)
        assert header.flags == Flag.SYN
        with pytest.raises(mux.SessionClosed):
            await stream.receive_some()
        with pytest.raises(mux.SessionClosed):
            await session.accept_stream()
        assert session.closed


async def test_keepalive_keeps_a_live_session(nursery):
    transport, peer = RawPeer.connect(nursery, answer_pings=False)
    config = mux.Config(keepalive_interval=0.05, ping_timeout=5.0)
    async with mux.open_session(transport, client=True, config=config) as session:
        for _ in range(4):
            header, _ = await peer.next_frame_of(FrameType.PING)
            await peer.send(pong(header.length))
        stream = await session.open_stream()
        await stream.send_all(b"alive")
        header, payload = await peer.next_frame_of(FrameType.DATA)
        assert payload == b"alive"
        assert not session.closed


async def test_receive_nowait_takes_what_arrived_without_waiting(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    with pytest.raises(trio.WouldBlock):
        accepted.receive_nowait()
    await opened.send_all(b"request")
    await settle()
    assert accepted.receive_nowait(3) == b"req"
    assert accepted.receive_nowait() == b"uest"
    with pytest.raises(trio.WouldBlock):
        accepted.receive_nowait()
    await opened.send_eof()
    await settle()
    assert accepted.receive_nowait() == b""
    with pytest.raises(ValueError):
        accepted.receive_nowait(0)
    await accepted.aclose()
    with pytest.raises(trio.ClosedResourceError):
        accepted.receive_nowait()


async def test_receive_nowait_raises_for_a_reset_stream(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    opened.reset()
    await settle()
    with pytest.raises(mux.StreamReset):
        accepted.receive_nowait()
