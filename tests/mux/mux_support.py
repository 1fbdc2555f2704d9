# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Helpers shared by the mux tests: frame builders and parsers, a wired pair of cores."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import NamedTuple

import attrs
import trio
import trio.testing

import mux
from mux import events
from mux.config import Config
from mux.connection import Connection
from mux.frames import (
    HEADER_SIZE,
    Flag,
    FrameType,
    GoAwayCode,
    Header,
    decode_header,
    encode_header,
)

KIB = 1024
MIB = 1024 * KIB
INITIAL_WINDOW = 256 * KIB
#: hashicorp's fixed 256 KiB window: every window update credits exactly the bytes consumed.
FIXED_WINDOW = Config(max_stream_window=INITIAL_WINDOW)
EVENT_TYPES = (
    events.StreamOpened,
    events.StreamAccepted,
    events.DataReceived,
    events.StreamEnded,
    events.StreamReset,
    events.WindowUpdated,
    events.PingReceived,
    events.PingAcknowledged,
    events.GoAwayReceived,
)


# ---- frames ---------------------------------------------------------------------------------


def data(stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return encode_header(FrameType.DATA, flags, stream_id, len(payload)) + payload


def window(stream_id: int, delta: int = 0, flags: int = 0) -> bytes:
    return encode_header(FrameType.WINDOW_UPDATE, flags, stream_id, delta)


def ping(opaque: int = 0, flags: int = Flag.SYN) -> bytes:
    return encode_header(FrameType.PING, flags, 0, opaque)


def pong(opaque: int = 0) -> bytes:
    return ping(opaque, Flag.ACK)


def go_away(code: int = GoAwayCode.NORMAL) -> bytes:
    return encode_header(FrameType.GO_AWAY, 0, 0, code)


def raw_header(version: int, type: int, flags: int, stream_id: int, length: int) -> bytes:
    """A header packed by hand, so it may carry any version and type."""
    return struct.pack(">BBHII", version, type, flags, stream_id, length)


def fields(header: Header) -> tuple[int, int, int, int]:
    return header.type, header.flags, header.stream_id, header.length


def parse_frames(buf: bytes) -> list[tuple[Header, bytes]]:
    """Split well-formed output into (header, payload) pairs; fails on a truncated frame."""
    frames, offset = [], 0
    while offset < len(buf):
        header = decode_header(buf, offset)
        size = header.length if header.type == FrameType.DATA else 0
        end = offset + HEADER_SIZE + size
        assert end <= len(buf), "truncated frame in the output"
        frames.append((header, bytes(buf[offset + HEADER_SIZE : end])))
        offset = end
    return frames


# ---- events ---------------------------------------------------------------------------------


class Data(NamedTuple):
    """The payload of consecutive DataReceived events of one stream, joined."""

    stream_id: int
    data: bytes


def merge(received: list[events.Event]) -> list[object]:
    """Events with the DataReceived pieces joined per stream and empty pieces dropped."""
    out: list[object] = []
    for event in received:
        assert isinstance(event, EVENT_TYPES), event
        if not isinstance(event, events.DataReceived):
            out.append(event)
        elif event.data:
            if out and isinstance(out[-1], Data) and out[-1].stream_id == event.stream_id:
                out[-1] = Data(event.stream_id, out[-1].data + bytes(event.data))
            else:
                out.append(Data(event.stream_id, bytes(event.data)))
    return out


def received_bytes(merged: list[object], stream_id: int) -> bytes:
    return b"".join(e.data for e in merged if isinstance(e, Data) and e.stream_id == stream_id)


# ---- cores ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Link:
    """A client core and a server core wired back to back."""

    def __init__(
        self,
        client_config: Config = Config(),
        server_config: Config = Config(),
        clock: FakeClock | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.client = Connection(client=True, config=client_config, clock=self.clock)
        self.server = Connection(client=False, config=server_config, clock=self.clock)

    def pump(self) -> tuple[list[object], list[object]]:
        """Deliver queued bytes both ways until both are quiet; return (client, server) events."""
        seen_by_client: list[events.Event] = []
        seen_by_server: list[events.Event] = []
        while True:
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not (to_server or to_client):
                return merge(seen_by_client), merge(seen_by_server)
            if to_server:
                seen_by_server += self.server.receive_data(to_server)
            if to_client:
                seen_by_client += self.client.receive_data(to_client)

    def open(self) -> int:
        """Open a stream from the client and accept it on the server."""
        stream_id = self.client.open_stream()
        assert self.pump() == ([], [events.StreamOpened(stream_id)])
        self.server.accept_stream(stream_id)
        assert self.pump() == ([events.StreamAccepted(stream_id)], [])
        return stream_id


STATES = (
    "opening",
    "open",
    "half_closed_local",
    "half_closed_remote",
    "closed",
    "reset_local",
    "reset_remote",
)


@attrs.frozen
class Scene:
    link: Link
    local: Connection
    peer: Connection
    stream_id: int
    #: The events ``local`` reported while the stream got there.
    history: list[object]


def stream_in_state(state: str, *, outbound: bool) -> Scene:
    """A link holding one stream in ``state`` as seen by ``local``, its opener or its acceptor."""
    link = Link()
    local, peer = (link.client, link.server) if outbound else (link.server, link.client)
    history: list[object] = []

    def pump() -> None:
        seen_by_client, seen_by_server = link.pump()
        history.extend(seen_by_client if local is link.client else seen_by_server)

    stream_id = link.client.open_stream()
    pump()
    if state != "opening":
        link.server.accept_stream(stream_id)
        pump()
    steps = {
        "half_closed_local": [local.send_eof],
        "half_closed_remote": [peer.send_eof],
        "closed": [local.send_eof, peer.send_eof],
        "reset_local": [local.reset_stream],
        "reset_remote": [peer.reset_stream],
    }
    for step in steps.get(state, []):
        step(stream_id)
        pump()
    return Scene(link, local, peer, stream_id, history)


def check_event_order(received: list[object]) -> None:
    """Per stream: nothing after StreamReset; no data and no second StreamEnded after
    StreamEnded."""
    ended: set[int] = set()
    reset: set[int] = set()
    for event in received:
        stream_id = getattr(event, "stream_id", None)
        if isinstance(event, events.StreamOpened):
            ended.discard(stream_id)
            reset.discard(stream_id)
            continue
        assert stream_id not in reset, f"{event} after the stream was reset"
        if isinstance(event, (Data, events.StreamEnded)):
            assert stream_id not in ended, f"{event} after the stream ended"
        if isinstance(event, events.StreamEnded):
            ended.add(stream_id)
        elif isinstance(event, events.StreamReset):
            reset.add(stream_id)


# ---- trio -----------------------------------------------------------------------------------


async def settle() -> None:
    """Wait until every task is blocked: over memory streams, all sent bytes are handled."""
    await trio.testing.wait_all_tasks_blocked()


async def stream_pair(client: mux.Session, server: mux.Session) -> tuple[mux.Stream, mux.Stream]:
    opened = await client.open_stream()
    accepted = await server.accept_stream()
    assert accepted.stream_id == opened.stream_id
    return opened, accepted


async def receive_all(stream: trio.abc.ReceiveStream, max_bytes: int | None = None) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(max_bytes):
        chunks.append(chunk)
    return b"".join(chunks)


class RawPeer:
    """The far end of a session's transport, speaking frames by hand.

    A background task parses what the session sends; pings are answered (unless told
    otherwise) and every other frame is handed to `next_frame`.
    """

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool) -> None:
        self.stream = stream
        self.answer_pings = answer_pings
        self._frames_in, self._frames = trio.open_memory_channel(math.inf)

    @classmethod
    def connect(
        cls, nursery: trio.Nursery, *, answer_pings: bool = True
    ) -> tuple[trio.abc.Stream, RawPeer]:
        """A transport for a session, and the peer at its other end."""
        transport, raw = trio.testing.memory_stream_pair()
        peer = cls(raw, answer_pings=answer_pings)
        nursery.start_soon(peer._run)
        return transport, peer

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    async def _run(self) -> None:
        buffer = bytearray()
        async with self._frames_in:
            try:
                while chunk := await self.stream.receive_some():
                    buffer += chunk
                    while frame := _pop_frame(buffer):
                        header, _ = frame
                        is_ping = header.type == FrameType.PING and header.flags & Flag.SYN
                        if is_ping and self.answer_pings:
                            # The session may be gone already: still hand over what it sent.
                            with contextlib.suppress(
                                trio.BrokenResourceError, trio.ClosedResourceError
                            ):
                                await self.send(pong(header.length))
                        else:
                            self._frames_in.send_nowait(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def next_frame(self) -> tuple[Header, bytes]:
        try:
            return await self._frames.receive()
        except trio.EndOfChannel:
            raise EOFError("the session closed its transport") from None

    async def next_frame_of(self, type: FrameType) -> tuple[Header, bytes]:
        while True:
            header, payload = await self.next_frame()
            if header.type == type:
                return header, payload


def _pop_frame(buffer: bytearray) -> tuple[Header, bytes] | None:
    if len(buffer) < HEADER_SIZE:
        return None
    header = decode_header(buffer)
    size = HEADER_SIZE + (header.length if header.type == FrameType.DATA else 0)
    if len(buffer) < size:
        return None
    payload = bytes(buffer[HEADER_SIZE:size])
    del buffer[:size]
    return header, payload
