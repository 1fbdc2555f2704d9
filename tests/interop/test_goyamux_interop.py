# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""mux against hashicorp/yamux (Go), in both roles, over TCP on 127.0.0.1.

The Go peer (goyamux/main.go) serves streams opened by Python (their first line
is a command: echo, sink, reset, goaway) and plays one scenario of its own; it
reports what it saw on stdout, one fact per line.
"""

import contextlib
import hashlib
import random
import struct

import pytest
import trio
import trio.testing

import mux
from mux.frames import Flag, FrameType, encode_header

pytestmark = pytest.mark.interop

MiB = 1 << 20
INITIAL_WINDOW = 256 * 1024
GO_BACKLOG = 256


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def receive_all(stream: mux.Stream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def read_line(stream: mux.Stream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        data = await stream.receive_some(1)
        assert data, f"end of stream after {line!r}"
        line += data
    return line


async def echo(stream: mux.Stream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


async def serve_echo(session: mux.Session) -> None:
    async with trio.open_nursery() as nursery:
        async for stream in session:
            nursery.start_soon(echo, stream)


async def echo_check(stream: mux.Stream, data: bytes) -> None:
    """Ask the Go peer to echo `data`, then check the reply and the clean end."""

    async def send() -> None:
        await stream.send_all(b"echo\n" + data)
        await stream.send_eof()

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        assert await receive_all(stream) == data


# Streams opened by each side, many at once


async def test_streams_opened_by_python(goyamux, python_client):
    count = 1000
    async with goyamux.session("serve", python_client=python_client) as (session, peer):
        # Opens wait while 256 streams are unacknowledged, so Go's backlog holds.
        streams = [await session.open_stream() for _ in range(count)]
        first = 1 if python_client else 2
        assert [s.stream_id for s in streams] == list(range(first, first + 2 * count, 2))
        async with trio.open_nursery() as nursery:
            for i, stream in enumerate(streams):
                nursery.start_soon(echo_check, stream, payload(i, (0, 1, 1000, 4000)[i % 4]))


async def test_streams_opened_by_go(goyamux, python_client):
    async with goyamux.session("open", python_client=python_client, streams=1000, size=2000) as (
        session,
        peer,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo, session)
            assert await peer.line() == "ok 1000"
            nursery.cancel_scope.cancel()


async def test_streams_opened_by_go_acknowledged_by_the_first_answer(goyamux, python_client):
    """With defer_ack, the ACK rides on the answer's first Data frame: hashicorp takes it.
    (Fewer streams than its backlog: hashicorp opens them all before it sends on any, and
    waits for ACKs while 256 are unacknowledged.)"""
    async with goyamux.session("open", python_client=python_client, streams=200, size=2000) as (
        session,
        peer,
    ):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                async with trio.open_nursery() as streams:
                    while True:
                        stream = await session.accept_stream(defer_ack=True)
                        streams.start_soon(echo, stream)

            nursery.start_soon(serve)
            assert await peer.line() == "ok 200"
            nursery.cancel_scope.cancel()


async def test_streams_opened_by_both_sides_at_once(goyamux, python_client):
    count = 500
    async with goyamux.session("open", python_client=python_client, streams=count, size=3000) as (
        session,
        peer,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_echo, session)
            async with trio.open_nursery() as mine:
                for i in range(count):
                    mine.start_soon(echo_check, await session.open_stream(), payload(i, 3000))
            assert await peer.line() == f"ok {count}"
            nursery.cancel_scope.cancel()


# Half-close in each direction, and 64 MiB each way


async def sink_to_go(session: mux.Session, data_chunks) -> str:
    """Send the chunks to the Go sink, then FIN; return its reply (the SHA-256)."""
    async with await session.open_stream() as stream:
        await stream.send_all(b"sink\n")
        for chunk in data_chunks:
            await stream.send_all(chunk)
        await stream.send_eof()
        return (await receive_all(stream)).decode()


async def take_from_go(session: mux.Session) -> str:
    """Hash the Go source's stream up to its FIN, then send the digest back."""
    async with await session.accept_stream() as stream:
        digest = hashlib.sha256()
        while data := await stream.receive_some():
            digest.update(data)
        await stream.send_all(digest.hexdigest().encode())
        await stream.send_eof()
        return digest.hexdigest()


async def test_half_close_python_to_go(goyamux, python_client):
    data = payload(1, INITIAL_WINDOW + 50_000)
    async with goyamux.session("serve", python_client=python_client) as (session, peer):
        reply = await sink_to_go(session, [data])
        expected = hashlib.sha256(data).hexdigest()
        assert reply == expected
        assert await peer.line() == f"sha256 {expected} {len(data)}"


async def test_half_close_go_to_python(goyamux, python_client):
    async with goyamux.session(
        "source", python_client=python_client, size=INITIAL_WINDOW + 50_000
    ) as (session, peer):
        digest = await take_from_go(session)
        assert await peer.lines(2) == [f"sha256 {digest}", f"reply {digest}"]


async def test_transfer_64mib_each_way_at_once(goyamux, python_client):
    size = 64 * MiB
    rng = random.Random(64)
    chunks = [rng.randbytes(MiB) for _ in range(size // MiB)]
    sent = hashlib.sha256(b"".join(chunks)).hexdigest()
    results = {}

    async def run(name, fn, *args):
        results[name] = await fn(*args)

    # Go's receive window is raised to 8 MiB: its SYN and ACK carry the delta.
    async with goyamux.session(
        "source", python_client=python_client, size=size, window=8 * MiB
    ) as (session, peer):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "reply", sink_to_go, session, chunks)
            nursery.start_soon(run, "received", take_from_go, session)
        assert results["reply"] == sent
        received = results["received"]
        assert sorted(await peer.lines(3)) == sorted(
            [f"sha256 {sent} {size}", f"sha256 {received}", f"reply {received}"]
        )


# RST in both directions


async def test_python_resets_a_stream(goyamux, python_client):
    async with goyamux.session("serve", python_client=python_client) as (session, peer):
        stream = await session.open_stream()
        await stream.send_all(b"reset\n")
        assert await read_line(stream) == b"ready\n"
        stream.reset()
        assert await peer.lines(2) == ["read: connection reset", "write: connection reset"]
        await echo_check(await session.open_stream(), payload(2, 1000))


async def test_go_resets_a_stream(goyamux, python_client):
    async with goyamux.session("reset", python_client=python_client) as (session, peer):
        stream = await session.accept_stream()
        with contextlib.suppress(mux.StreamReset):  # the RST may come before this returns
            await stream.send_all(b"ready\n")
        received = b""
        with pytest.raises(mux.StreamReset):
            while data := await stream.receive_some():
                received += data
        # hashicorp drops buffered data on RST; either way nothing else arrives.
        assert b"doomed\n".startswith(received)
        assert await peer.line() == f"reset {stream.stream_id}"
        with pytest.raises(mux.StreamReset):
            await stream.send_all(b"too late")
        await echo(await session.accept_stream())
        assert await peer.line() == "ok"


# Acknowledgement


async def test_stream_answered_without_ack_outlives_open_timeout(goyamux, python_client):
    """hashicorp never ACKs a stream whose FIN arrived before its Accept, yet it
    answers on it: the answer shows the stream was accepted, so it must not be
    reset when stream_open_timeout passes."""
    config = mux.Config(stream_open_timeout=0.5)
    async with goyamux.session("gated", python_client=python_client, config=config) as (
        session,
        peer,
    ):
        gate = await session.open_stream()
        stream = await session.open_stream()
        await stream.send_all(b"late\n")
        await stream.send_eof()
        await session.ping()  # Go has read the FIN: the stream waits in its backlog
        await gate.send_all(b"open\n")
        assert await read_line(stream) == b"hello\n"
        await trio.sleep(4 * config.stream_open_timeout)  # the open timeout passes
        await gate.send_all(b"close\n")
        assert await receive_all(stream) == b""
        await gate.aclose()


# Ping both ways


async def test_ping_both_ways(goyamux, python_client):
    async with goyamux.session("ping", python_client=python_client) as (session, peer):
        for _ in range(3):
            rtt = await session.ping()
            assert isinstance(rtt, float) and rtt >= 0
        assert await peer.lines(3) == ["ping ok"] * 3


# GoAway


async def test_go_away_from_go(goyamux, python_client):
    async with goyamux.session("serve", python_client=python_client) as (session, peer):
        stream = await session.open_stream()
        await stream.send_all(b"goaway\n")
        # Go writes "gone" after its GoAway frame, so the GoAway was received.
        assert await read_line(stream) == b"gone\n"
        with pytest.raises(mux.RemoteGoAway):
            await session.open_stream()
        # Existing streams go on, and so does the session.
        await stream.send_all(b"still here")
        await stream.send_eof()
        assert await receive_all(stream) == b"still here"
        await stream.aclose()
        await session.ping()


async def test_go_away_from_python(goyamux, python_client):
    async with goyamux.session("goaway", python_client=python_client) as (session, peer):
        stream = await session.accept_stream()
        await session.go_away()
        await stream.send_all(b"went away\n")
        assert await peer.line() == "open: remote end is not accepting connections"
        assert await receive_all(stream) == b"alive\n"
        await stream.aclose()


# Accept backlog full on the Go side


async def test_go_backlog_full_resets_excess_streams(goyamux, python_client):
    count = GO_BACKLOG + 44
    # Python lets more of its streams wait for an ACK than Go's backlog takes.
    config = mux.Config(accept_backlog=count)
    async with goyamux.session("hold", python_client=python_client, config=config) as (
        session,
        peer,
    ):
        streams = [await session.open_stream() for _ in range(count)]
        # Go answers the ping after the RSTs for the SYNs that came before it.
        await session.ping()
        reset = []
        for stream in streams:
            try:
                await stream.send_all(b"x")
            except mux.StreamReset:
                reset.append(stream.stream_id)
        assert reset == [s.stream_id for s in streams[GO_BACKLOG:]]
        with pytest.raises(mux.StreamReset):
            await streams[-1].receive_some()
        await session.ping()
        assert not session.closed


# Window overrun: the receiver tears the session down


def frame(
    type_: FrameType, flags: int, stream_id: int, length: int = 0, data: bytes = b""
) -> bytes:
    return encode_header(type_, flags, stream_id, len(data) if data else length) + data


GO_AWAY_PROTOCOL_ERROR = bytes.fromhex("000300000000000000000001")
# Stream 1, opened with WindowUpdate|SYN, then exactly the initial window in
# 64 KiB Data frames, then a Ping that must still be answered.
FILL_WINDOW = b"".join(
    [
        frame(FrameType.WINDOW_UPDATE, Flag.SYN, 1),
        *(frame(FrameType.DATA, 0, 1, data=bytes(64 * 1024)) for _ in range(4)),
        frame(FrameType.PING, Flag.SYN, 0, 7),
    ]
)
PONG = frame(FrameType.PING, Flag.ACK, 0, 7)
ONE_BYTE_TOO_MANY = frame(FrameType.DATA, 0, 1, data=b"!")


class RawPeer:
    """A yamux peer written by hand on a plain TCP stream; it answers pings."""

    def __init__(self, transport: trio.abc.Stream):
        self.transport = transport
        self._buffer = b""

    async def receive_frame(self) -> bytes | None:
        """The next whole frame (header and payload) other than a ping to answer;
        None once the connection ended."""
        while True:
            if len(self._buffer) >= 12:
                type_, flags, _, length = struct.unpack_from(">xBHII", self._buffer)
                end = 12 + (length if type_ == FrameType.DATA else 0)
                if len(self._buffer) >= end:
                    received, self._buffer = self._buffer[:end], self._buffer[end:]
                    if type_ != FrameType.PING or flags != Flag.SYN:
                        return received
                    await self.transport.send_all(frame(FrameType.PING, Flag.ACK, 0, length))
                    continue
            try:
                data = await self.transport.receive_some()
            except trio.BrokenResourceError:  # reset by the peer
                data = b""
            if not data:
                assert not self._buffer, f"connection ended inside a frame: {self._buffer!r}"
                return None
            self._buffer += data

    async def receive_until(self, wanted: bytes) -> list[bytes]:
        """The frames that come before `wanted`."""
        frames = []
        while (received := await self.receive_frame()) != wanted:
            assert received is not None, f"connection ended before {wanted.hex()}"
            frames.append(received)
        return frames

    async def receive_frames(self) -> list[bytes]:
        """The frames until the connection ends."""
        frames = []
        while (received := await self.receive_frame()) is not None:
            frames.append(received)
        return frames


async def test_go_tears_down_on_window_overrun(goyamux):
    async with goyamux.peer("hold") as peer:
        raw = RawPeer(peer.transport)
        await raw.transport.send_all(FILL_WINDOW)
        assert await raw.receive_until(PONG) == []
        await raw.transport.send_all(ONE_BYTE_TOO_MANY)
        # hashicorp queues GoAway(1) but may close the connection before it goes out.
        assert await raw.receive_frames() in ([], [GO_AWAY_PROTOCOL_ERROR])
        assert await peer.line() == "closed"


async def accept_until_closed(transport: trio.abc.Stream) -> None:
    async with mux.open_session(transport, client=False) as session:
        await session.accept_stream()  # stream 1, whose data is never read
        with pytest.raises(mux.SessionClosed) as ended:
            await session.accept_stream()
    assert not ended.value.clean


async def test_mux_tears_down_on_window_overrun():
    with trio.fail_after(60):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        async with listener, await trio.testing.open_stream_to_socket_listener(listener) as tcp:
            raw = RawPeer(tcp)
            async with await listener.accept() as transport, trio.open_nursery() as nursery:
                nursery.start_soon(accept_until_closed, transport)
                await raw.transport.send_all(FILL_WINDOW)
                frames = await raw.receive_until(PONG)
                await raw.transport.send_all(ONE_BYTE_TOO_MANY)
                frames += await raw.receive_frames()
    # The ACK (with no window growth) goes out when the stream is accepted.
    assert frames == [frame(FrameType.WINDOW_UPDATE, Flag.ACK, 1), GO_AWAY_PROTOCOL_ERROR]
