# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A yamux session over any `trio.abc.Stream`: the thin Trio side of `mux.connection`.

Four tasks per session, in the session's own nursery: a reader that feeds the transport's
bytes to the `Connection` and hands the events to streams; one writer that sends everything
queued since its last write in one `send_all` (frames of many streams coalesce while a write
is in flight; a sender writes itself when the transport allows and no write is in flight);
keepalive pings; and stream-open and stream-close deadlines.

Error contract: every call into the transport goes through one translation boundary
(`_TRANSPORT_ERRORS`, `Session._connection_lost`): whatever the transport raises (`OSError`,
`ssl.SSLError`, `trio.BrokenResourceError`, `trio.ClosedResourceError`) ends the session, and
callers see `SessionClosed` (or `StreamReset` for one stream), a fresh object per raise whose
``__cause__`` is the transport's error. No error of the sans-IO core escapes the adapter.
"""

from __future__ import annotations

import math
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import attrs
import trio
from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled

from . import events as ev
from .config import Config
from .connection import Connection
from .errors import LocalProtocolError, RemoteProtocolError
from .stream import Stream, _Waiter
from .stream_errors import RemoteGoAway, SessionClosed, StreamReset, fresh

#: What a transport may raise when the connection fails: `ssl.SSLError` is an `OSError`;
#: trio's streams raise the other two (a mux `Stream` used as a transport raises
#: `SessionClosed` or `StreamReset`, both `trio.BrokenResourceError`).
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@attrs.frozen
class SessionStatistics:
    """A snapshot of a session's counters (`Session.statistics`)."""

    #: Streams open in either direction now.
    streams_open: int
    #: Streams we opened, and streams of the peer's the application accepted, since the start.
    streams_opened_total: int
    streams_accepted_total: int
    #: Bytes handed to the transport and read from it (frame headers included).
    bytes_sent: int
    bytes_received: int
    #: The last measured round-trip time in seconds (0.0 before the first ping's answer).
    rtt: float


@asynccontextmanager
async def open_session(
    transport: trio.abc.Stream, *, client: bool, config: Config | None = None
) -> AsyncIterator[Session]:
    """Run a yamux session over ``transport``; leaving the block closes it and its streams.

    ``client`` picks the odd stream IDs (the end that dialled, by convention). The session's
    tasks run in a nursery of their own inside the block; on leaving it, the session sends
    GoAway, flushes what is queued (within ``config.write_timeout``) and closes the
    transport, even when the block is left by cancellation. A failure of the transport ends
    the session (`Session.close_reason` says why); it is not raised out of the block.
    """
    async with trio.open_nursery() as nursery:
        session = Session(transport, client=client, config=config)
        nursery.start_soon(session._run_background, session._read_loop)
        nursery.start_soon(session._write_loop)
        nursery.start_soon(session._run_background, session._keepalive_loop)
        nursery.start_soon(session._run_background, session._deadline_loop)
        try:
            yield session
        finally:
            await session.aclose()


class Session:
    """One yamux session over a `trio.abc.Stream`: opens and accepts `Stream` objects.

    Create it with `open_session`. Every method may be called from any task of the program;
    after the session has ended, `open_stream`, `accept_stream`, `ping` and `go_away` raise
    `SessionClosed` (a fresh object each time, see `close_reason`).
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        client: bool,
        config: Config | None,
    ) -> None:
        self._transport = transport
        self._config = config = config if config is not None else Config()
        self._conn = Connection(client=client, config=config, clock=trio.current_time)
        #: Cancels the reader and the timer once the writer has closed the transport (never
        #: the nursery's own scope: that one also holds the application's code).
        self._background: list[trio.CancelScope] = []
        self._streams: dict[int, Stream] = {}
        #: Streams the peer opened, oldest first, until accepted (or refused by the core).
        self._accept_queue: dict[int, Stream] = {}
        self._acceptors = ParkingLot()
        self._buffer_space = ParkingLot()
        self._open_slots = ParkingLot()
        #: Tasks in `wait_streams_closed`.
        self._idle_waiters = ParkingLot()
        self._writer = _Waiter()
        #: Someone (the writer task or a sender) is writing to the transport right now.
        self._writing = False
        self._send_some = _partial_sender(transport)
        self._send_nowait = nowait_sender(transport)
        self._pings: dict[int, trio.Event] = {}
        #: The reader waits here while the control output is full (woken by writes).
        self._reader = _Waiter()
        self._error: SessionClosed | None = None
        self._closed = trio.Event()
        self._opened_total = 0
        self._accepted_total = 0
        self._handlers: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.DataReceived: self._on_data,
            ev.WindowUpdated: self._on_window_update,
            ev.StreamOpened: self._on_stream_opened,
            ev.StreamAccepted: self._on_stream_accepted,
            ev.StreamEnded: self._on_stream_ended,
            ev.StreamReset: self._on_stream_reset,
            ev.PingReceived: _ignore,
            ev.PingAcknowledged: self._on_ping_acknowledged,
            ev.GoAwayReceived: _ignore,
        }

    # ---- public API -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the session is over (its `close_reason` is set)."""
        return self._error is not None

    @property
    def streams_open(self) -> int:
        """Streams that are open in either direction (cheaper than `statistics`)."""
        return self._conn.streams_open

    @property
    def close_reason(self) -> SessionClosed | None:
        """Why the session ended (None while it runs): the record of the `SessionClosed`
        that calls raise from then on, its ``__cause__`` the transport error if one ended it."""
        return self._error

    def statistics(self) -> SessionStatistics:
        """The session's counters now."""
        conn = self._conn
        return SessionStatistics(
            streams_open=conn.streams_open,
            streams_opened_total=self._opened_total,
            streams_accepted_total=self._accepted_total,
            bytes_sent=conn.bytes_sent,
            bytes_received=conn.bytes_received,
            rtt=conn.rtt,
        )

    async def open_stream(self) -> Stream:
        """Open a stream. Data may flow at once: this does not wait for the peer's ACK.

        As in hashicorp/yamux, it waits while ``accept_backlog`` of our streams are still
        unacknowledged, so a burst of opens does not overflow the peer's accept backlog.

        Raises `SessionClosed` once the session is over, after GoAway was sent, or when the
        stream IDs are exhausted; `RemoteGoAway` after the peer's GoAway. A checkpoint:
        cancelled, it opens nothing.
        """
        await checkpoint_if_cancelled()
        self._check_open()
        if self._conn.unacknowledged_streams >= self._config.accept_backlog:
            while self._conn.unacknowledged_streams >= self._config.accept_backlog:
                await self._open_slots.park()
                self._check_open()
        else:
            await cancel_shielded_checkpoint()
            self._check_open()  # a GoAway may have gone out while we yielded
        try:
            stream_id = self._conn.open_stream()
        except LocalProtocolError as exc:  # stream IDs exhausted
            raise SessionClosed(str(exc), clean=True) from exc
        stream = self._streams[stream_id] = Stream(self, self._conn, stream_id)
        self._opened_total += 1
        self._writer.wake()
        return stream

    async def accept_stream(self, *, defer_ack: bool = False) -> Stream:
        """The next stream the peer opened, waiting for one if needed.

        With ``defer_ack``, the acknowledgement (ACK) is not sent on its own: it rides on
        the stream's first frame (an answer, FIN, RST or window update). Use it where the
        peer sends its request with the open and the answer follows soon: the peer counts
        the stream as unacknowledged until then (hashicorp and this session wait to open
        more while ``accept_backlog`` are, and reset it after the open timeout). Streams
        the peer opened before the session ended are still handed out (what it sent on
        them can be read); then it raises `SessionClosed`. A checkpoint: cancelled, it
        takes no stream.
        """
        await checkpoint_if_cancelled()
        parked = False
        while True:
            if self._accept_queue:
                queue = self._accept_queue
                stream = queue.pop(next(iter(queue)))
                if self._error is None:
                    self._conn.accept_stream(stream.stream_id, defer_ack=defer_ack)
                    if not defer_ack:
                        self._writer.wake()
                # Once the session is over, streams it opened are still handed out: what the
                # peer sent on them before the end can be read.
                self._accepted_total += 1
                if not parked:  # waiting for the stream was the schedule point
                    await cancel_shielded_checkpoint()
                return stream
            if self._error is not None:
                raise fresh(self._error)
            await self._acceptors.park()
            parked = True

    def __aiter__(self) -> Session:
        """Iterating a session accepts its streams: ``async for stream in session``."""
        return self

    async def __anext__(self) -> Stream:
        """The next stream; iteration ends with the session (`close_reason` tells why)."""
        try:
            return await self.accept_stream()
        except SessionClosed:
            raise StopAsyncIteration from None

    async def ping(self) -> float:
        """Ping the peer and return the round-trip time in seconds.

        Raises `SessionClosed` if the session is or becomes over before the answer comes.
        Cancellation abandons the wait (the answer, when it comes, is ignored).
        """
        await checkpoint_if_cancelled()
        self._check_alive()
        # Unpredictable, so that a peer cannot answer pings before it has read them.
        opaque = secrets.randbits(32)
        while self._conn.ping_unanswered(opaque):
            opaque = secrets.randbits(32)  # pragma: no cover - one chance in 2**32 per ping
        answered = self._pings[opaque] = trio.Event()
        self._conn.send_ping(opaque)
        self._writer.wake()
        start = trio.current_time()
        try:
            await answered.wait()
        finally:
            self._pings.pop(opaque, None)
        self._check_alive()
        rtt = trio.current_time() - start
        self._conn.set_rtt(rtt)
        return rtt

    async def go_away(self) -> None:
        """Tell the peer to open no more streams; open streams go on. We open none either.

        Idempotent. Raises `SessionClosed` if the session is over. A checkpoint.
        """
        await checkpoint_if_cancelled()
        self._check_alive()
        if not self._conn.local_go_away:
            self._conn.go_away()
            self._writer.wake()
        await cancel_shielded_checkpoint()

    async def wait_streams_closed(self) -> None:
        """Return once no stream of this session is open in either direction (`streams_open`
        is 0), or once the session has ended; at once if that is so already. Streams opened
        meanwhile are waited for too. Raises nothing of its own; cancelling it changes nothing.
        """
        await checkpoint_if_cancelled()
        while self._error is None and self._conn.streams_open:
            await self._idle_waiters.park()
        await cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        """Close every stream, flush what they queued (within write_timeout) and the transport.

        Waits until the transport is closed; idempotent. Cancelling the wait does not stop
        the closing, which the session's own tasks finish.
        """
        if self._error is None:
            if not self._conn.local_go_away:
                self._conn.go_away()
            self._terminate("the session was closed", clean=True)
        await self._closed.wait()

    # ---- used by streams --------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise fresh(self._error)

    def _check_open(self) -> None:
        self._check_alive()
        if self._conn.remote_go_away:
            raise RemoteGoAway("the peer sent GoAway: it accepts no new streams")
        if self._conn.local_go_away:
            raise SessionClosed("GoAway was sent: no new streams on this session", clean=True)

    async def _flush(self) -> bool:
        """Write what is queued from the calling task, if no write is in flight and the
        transport can take a partial write atomically; else leave it to the writer task.

        Saves a task switch per write on the hot path. Returns whether it checkpointed.
        """
        send_some = self._send_some
        if send_some is None or self._writing:
            self._writer.wake()
            return False
        data = self._conn.data_to_send()
        self._reader.wake()
        self._writing = True
        sent = 0
        try:
            sent = await send_some(data)
        except _TRANSPORT_ERRORS as exc:
            self._connection_lost(exc)
        finally:
            self._writing = False
            if sent < len(data):
                self._conn.unsend(memoryview(data)[sent:])
            if self._conn.pending_output():
                self._writer.wake()
        return True

    def _write_now(self) -> None:
        """Write what is queued from the calling task without waiting, if no write is in
        flight and the transport can write without waiting; what it does not take (or all,
        where it cannot) is left to the writer task. Never blocks, never raises: a transport
        error ends the session."""
        send_nowait = self._send_nowait
        if send_nowait is None or self._writing or self._error is not None:
            self._writer.wake()
            return
        conn = self._conn
        data = conn.data_to_send()
        self._reader.wake()
        try:
            sent = send_nowait(data)
        except _TRANSPORT_ERRORS as exc:
            sent = 0
            self._connection_lost(exc)
        if sent < len(data):
            conn.unsend(memoryview(data)[sent:])
            self._writer.wake()
        elif sent and self._buffer_space:
            self._buffer_space.unpark_all()

    async def _wait_buffer_space(self) -> None:
        await self._buffer_space.park()

    def _consumed(self, stream_id: int, amount: int) -> None:
        if self._error is None:
            self._conn.consumed(stream_id, amount)
            if self._conn.pending_output():
                self._write_now()  # a window update, from the reading task

    def _send_eof(self, stream_id: int) -> None:
        self._conn.send_eof(stream_id)
        self._forget_if_done(stream_id)
        self._write_now()  # the FIN, from the closing task
        self._wake_if_idle()

    def _close_stream(self, stream: Stream, reset: bool) -> None:
        stream_id = stream.stream_id
        self._streams.pop(stream_id, None)
        if self._error is None and self._conn.stream_state(stream_id) is not None:
            if reset:
                self._conn.reset_stream(stream_id)
            else:
                self._conn.close_stream(stream_id)
            self._writer.wake()
        self._wake_if_idle()

    def _wake_if_idle(self) -> None:
        """Wake `wait_streams_closed` once no stream is open or the session ended."""
        if self._idle_waiters and (self._error is not None or not self._conn.streams_open):
            self._idle_waiters.unpark_all()

    def _forget_if_done(self, stream_id: int) -> None:
        if self._conn.stream_state(stream_id) is None:
            self._streams.pop(stream_id, None)

    # ---- events from the peer ---------------------------------------------------------

    def _on_data(self, event: ev.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_data(event.data)

    def _on_window_update(self, event: ev.WindowUpdated) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._wake_sender()

    def _on_stream_opened(self, event: ev.StreamOpened) -> None:
        stream = Stream(self, self._conn, event.stream_id)
        if self._error is not None:
            # Read in the same batch as the session's end (the writer found the connection
            # broken meanwhile): handed out like the others, with the session's error.
            stream._on_error(self._error, discard=False)
        else:
            self._streams[event.stream_id] = stream
        self._accept_queue[event.stream_id] = stream
        self._acceptors.unpark()

    def _on_stream_ended(self, event: ev.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_eof()
            if event.closed:
                del self._streams[event.stream_id]

    def _on_stream_accepted(self, event: ev.StreamAccepted) -> None:
        if self._open_slots:
            self._open_slots.unpark()

    def _on_stream_reset(self, event: ev.StreamReset) -> None:
        if self._open_slots and self._conn.unacknowledged_streams < self._config.accept_backlog:
            self._open_slots.unpark()
        stream = self._streams.pop(event.stream_id, None)
        if stream is not None:
            # Reset before it was accepted: the peer gave up, or the backlog was full.
            self._accept_queue.pop(event.stream_id, None)
            stream._on_error(
                StreamReset(f"stream {event.stream_id} was reset by the peer"), discard=True
            )

    def _on_ping_acknowledged(self, event: ev.PingAcknowledged) -> None:
        answered = self._pings.get(event.opaque)
        if answered is not None:
            answered.set()

    # ---- the session's tasks ----------------------------------------------------------

    def _terminate(
        self, reason: str, *, clean: bool = False, cause: BaseException | None = None
    ) -> None:
        """End the session: every stream and waiter learns why; the writer flushes and closes."""
        if self._error is not None:
            return
        self._error = error = SessionClosed(reason, clean=clean)
        error.__cause__ = cause
        for stream in self._streams.values():
            stream._on_error(error, discard=False)
        self._streams.clear()
        self._acceptors.unpark_all()
        self._buffer_space.unpark_all()
        self._open_slots.unpark_all()
        self._idle_waiters.unpark_all()
        self._reader.wake()
        for answered in self._pings.values():
            answered.set()
        self._writer.wake()

    async def _read_loop(self) -> None:
        conn, handlers = self._conn, self._handlers
        receive = _receiver(self._transport)
        size = self._config.receive_size
        try:
            while self._error is None:
                data = await receive(size)
                if not data:
                    self._terminate("the peer closed the connection", clean=True)
                    return
                try:
                    events = conn.receive_data(data)
                    while True:
                        for event in events:
                            handlers[type(event)](event)
                        if self._idle_waiters:
                            self._wake_if_idle()
                        if conn.terminated is not None:
                            self._terminate(str(conn.terminated))
                            return
                        if conn.pending_output():
                            self._writer.wake()
                        if not conn.input_held:
                            break
                        # The peer makes us answer faster than it reads: read no more until
                        # the writer has taken the answers (backpressure), for so long only.
                        if not await self._wait_control_taken():
                            return
                        events = conn.resume_receiving()
                except RemoteProtocolError as exc:
                    self._terminate(f"the peer broke the yamux protocol: {exc}", cause=exc)
                    return
        except _TRANSPORT_ERRORS as exc:
            self._connection_lost(exc)

    async def _wait_control_taken(self) -> bool:
        """Wait until the writer has taken the queued control frames; past
        ``control_backlog_timeout``, end the session (GoAway, protocol error) and say False."""
        conn, timeout = self._conn, self._config.control_backlog_timeout
        with trio.move_on_after(timeout):
            while conn.control_output() and self._error is None:
                await self._reader.wait()
            return self._error is None
        exc = conn.protocol_violation(
            f"the peer did not read our answers to its frames for {timeout} s"
        )
        self._writer.wake()
        self._terminate(f"the peer broke the yamux protocol: {exc}", cause=exc)
        return False

    def _connection_lost(self, exc: BaseException) -> None:
        """The translation boundary: a transport error becomes the session's end."""
        # After the peer's GoAway, the connection going away is the orderly end.
        self._terminate(
            f"the connection was lost: {exc or type(exc).__name__}",
            clean=self._conn.remote_go_away and self._conn.terminated is None,
            cause=exc,
        )

    async def _write_loop(self) -> None:
        transport, conn = self._transport, self._conn
        send_some = self._send_some
        timeout = self._config.write_timeout
        # One cancel scope for all writes, its deadline moved per write: cheaper than a
        # new scope for every write on this hot path.
        deadline = trio.CancelScope()
        try:
            with deadline:
                while True:
                    if self._writing or not conn.pending_output():
                        if self._error is not None and not self._writing:
                            break
                        await self._writer.wait()
                        continue
                    self._writing = True
                    self._reader.wake()
                    with memoryview(conn.data_to_send()) as data:
                        # The deadline is about progress: a slow link that keeps moving is
                        # not a dead one. A partial write (`send_some`) takes all the
                        # transport has room for at once and waits only when it has none:
                        # one task step per time the link fills, not one per slice.
                        start = 0
                        while start < len(data):
                            deadline.deadline = trio.current_time() + timeout
                            if send_some is not None:
                                start += await send_some(data[start:])
                            else:
                                end = start + _WRITE_SLICE
                                await transport.send_all(data[start:end])
                                start = end
                    deadline.deadline = math.inf
                    self._writing = False
                    self._buffer_space.unpark_all()
            if deadline.cancelled_caught:
                self._terminate(f"a write to the peer made no progress for {timeout} s")
        except _TRANSPORT_ERRORS as exc:
            self._connection_lost(exc)
        finally:
            with trio.move_on_after(timeout) as cleanup:
                cleanup.shield = True
                try:
                    await transport.aclose()
                except _TRANSPORT_ERRORS as exc:
                    self._connection_lost(exc)
            self._closed.set()
            for scope in self._background:
                scope.cancel()

    async def _run_background(self, loop: Callable[[], Awaitable[None]]) -> None:
        if self._closed.is_set():
            return
        scope = trio.CancelScope()
        self._background.append(scope)
        with scope:
            try:
                await loop()
            except SessionClosed:
                pass

    async def _keepalive_loop(self) -> None:
        """Pings: the first measures the RTT (windows grow by it); then, with keepalive on,
        one every keepalive_interval, and a ping unanswered within ping_timeout ends the session."""
        config = self._config
        while True:
            with trio.move_on_after(config.ping_timeout) as deadline:
                await self.ping()
            if deadline.cancelled_caught and config.enable_keepalive:
                self._terminate(
                    f"keepalive: the peer did not answer a ping within {config.ping_timeout} s"
                )
                return
            if not config.enable_keepalive:
                return
            await trio.sleep(config.keepalive_interval)

    async def _deadline_loop(self) -> None:
        """Stream-open and stream-close deadlines."""
        config = self._config
        interval = min(config.stream_open_timeout, config.stream_close_timeout) / 4
        while True:
            await trio.sleep(interval)
            self._reset_overdue(trio.current_time())

    def _reset_overdue(self, now: float) -> None:
        """Reset streams the peer never acknowledged, and closed ones it never finished."""
        conn, config = self._conn, self._config
        for stream_id in conn.overdue_streams(now - config.stream_open_timeout):
            conn.reset_stream(stream_id)
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                error = StreamReset(
                    f"stream {stream_id}: the peer did not acknowledge it "
                    f"within {config.stream_open_timeout} s"
                )
                stream._on_error(error, discard=True)
        for stream_id in conn.lingering_streams(now - config.stream_close_timeout):
            conn.reset_stream(stream_id)
        if self._open_slots and conn.unacknowledged_streams < config.accept_backlog:
            self._open_slots.unpark_all()
        self._wake_if_idle()
        self._writer.wake()


#: How much one write to a transport without a partial write (`send_some`) may carry: the
#: unit of progress for write_timeout there.
_WRITE_SLICE = 64 * 1024


def _ignore(event: ev.Event) -> None:
    pass


def _partial_sender(
    transport: trio.abc.Stream,
) -> Callable[[bytes | bytearray | memoryview], Awaitable[int]] | None:
    """A coroutine that writes part of a buffer and either returns how much it wrote or
    raises having written nothing, even when cancelled; None where the transport has none.

    trio's own socket ``send`` is such a call; a transport can offer one as ``send_some``.
    """
    send_some = getattr(transport, "send_some", None)
    if send_some is not None:
        return cast("Callable[[bytes | bytearray | memoryview], Awaitable[int]]", send_some)
    if type(transport) is trio.SocketStream:
        return transport.socket.send
    return None


def nowait_sender(
    transport: trio.abc.Stream,
) -> Callable[[bytes | bytearray | memoryview], int] | None:
    """A call that writes as much of a buffer as ``transport`` takes without waiting and
    returns how much (0: nothing now), raising the transport's error having written nothing
    (`OSError` for a `trio.SocketStream`); None where the transport has none. A transport can
    offer one as ``send_nowait``. Not a checkpoint: for callers that cannot await."""
    send_nowait = getattr(transport, "send_nowait", None)
    if send_nowait is not None:
        return cast("Callable[[bytes | bytearray | memoryview], int]", send_nowait)
    if type(transport) is not trio.SocketStream:
        return None
    # trio's socket wraps a non-blocking stdlib socket; once closed, its send raises
    # OSError (it never reaches another descriptor).
    raw = getattr(transport.socket, "_sock", None)
    if not isinstance(raw, socket.socket):  # pragma: no cover - trio's layout changed
        return None
    send = raw.send

    def send_socket(data: bytes | bytearray | memoryview) -> int:
        try:
            return send(data)
        except BlockingIOError:
            return 0

    return send_socket


def _receiver(transport: trio.abc.Stream) -> Callable[[int], Awaitable[bytes | bytearray]]:
    """How to read from the transport: straight from the socket where it is a plain one
    (skipping a per-read context manager), else through `receive_some`."""
    if type(transport) is trio.SocketStream:
        return transport.socket.recv
    return transport.receive_some
