# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""One yamux stream as a `trio.abc.HalfCloseableStream`.

A stream holds what arrived for it until the application reads it, and at most one parked
task per direction; nothing else, so that an idle stream costs a few hundred bytes. Its
protocol state (which halves are open, its send window) lives in the session's sans-IO
`Connection`, which the stream asks through the session.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import (
    Abort,
    Task,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from .conflict import RECEIVING, SENDING, ConflictDetector
from .stream_errors import fresh

if TYPE_CHECKING:
    from .connection import Connection
    from .session import Session

#: What receive_some returns at most when the caller does not say.
DEFAULT_RECEIVE_SIZE = 256 * 1024


class _Waiter:
    """Parks one task until woken; the per-stream alternative to a trio.Event."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: Task | None = None

    async def wait(self) -> None:
        self.task = current_task()

        def abort(_: object) -> Abort:
            self.task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


class Stream(trio.abc.HalfCloseableStream):
    """One yamux stream: a `trio.abc.HalfCloseableStream` made by `Session.open_stream`
    or `Session.accept_stream` (never directly).

    Errors: a reset stream raises `StreamReset`, a stream of an ended session raises
    `SessionClosed` (fresh objects each time, both `trio.BrokenResourceError`); using a
    stream after `aclose` raises `trio.ClosedResourceError`; two tasks sending (or
    receiving) at once raise `trio.BusyResourceError`. Every async method is a checkpoint,
    and a cancelled call has no effect, except that `send_all` may have queued part of its
    data, as trio's streams may.
    """

    __slots__ = (
        "_chunks",
        "_closed",
        "_conn",
        "_eof",
        "_error",
        "_push",
        "_receive_conflict",
        "_receive_waiter",
        "_send_conflict",
        "_send_waiter",
        "_session",
        "stream_id",
    )

    def __init__(self, session: Session, conn: Connection, stream_id: int) -> None:
        self._session = session
        #: The session's sans-IO core: it owns the stream's protocol state (open halves,
        #: send window); the stream asks it, through its public methods.
        self._conn = conn
        #: The yamux stream ID (odd for streams the client end opened).
        self.stream_id = stream_id
        self._chunks: deque[bytes | memoryview] | None = None
        self._eof = False
        #: The record of what broke the stream (a fresh copy is raised each time).
        self._error: BaseException | None = None
        self._closed = False
        self._receive_conflict = ConflictDetector(RECEIVING)
        self._send_conflict = ConflictDetector(SENDING)
        self._receive_waiter: _Waiter | None = None
        self._send_waiter: _Waiter | None = None
        self._push: Callable[[memoryview], int] | None = None

    def __repr__(self) -> str:
        return f"<mux.Stream {self.stream_id}>"

    # ---- called by the session --------------------------------------------------------

    def _on_data(self, data: memoryview) -> None:
        push = self._push
        if push is not None and not self._chunks:
            waiter = self._receive_waiter
            if waiter is not None and waiter.task is not None:
                # The reader is parked with nothing buffered: hand the data on from here.
                try:
                    taken = push(data)
                except OSError:
                    # The receiving task's own write meets the error and reports it.
                    self._push = None
                    taken = 0
                if taken:
                    self._session._consumed(self.stream_id, taken)
                    if taken == len(data):
                        return
                    data = data[taken:]
        # Keep a view only where it is most of the read it came from; a small piece is
        # copied so a slow reader cannot pin large receive buffers.
        piece = data if len(data) * 2 >= len(data.obj) else bytes(data)  # type: ignore[arg-type]
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(piece)
        self._wake_receiver()

    def _on_eof(self) -> None:
        self._eof = True
        self._wake_receiver()

    def _on_error(self, error: BaseException, discard: bool) -> None:
        """The stream is broken: by a reset (``discard`` unread data) or the session's end."""
        if self._error is None:
            self._error = error
        if discard:
            self._chunks = None
            self._eof = False
        self._wake_receiver()
        self._wake_sender()

    def _wake_receiver(self) -> None:
        if self._receive_waiter is not None:
            self._receive_waiter.wake()

    def _wake_sender(self) -> None:
        if self._send_waiter is not None:
            self._send_waiter.wake()

    async def _wait_receivable(self) -> None:
        if self._receive_waiter is None:
            self._receive_waiter = _Waiter()
        await self._receive_waiter.wait()

    async def _wait_sendable(self) -> None:
        """Wait for send window (woken by the peer's window update) or for room in the
        session's write buffer, whichever is missing."""
        if self._conn.send_window(self.stream_id) == 0:
            if self._send_waiter is None:
                self._send_waiter = _Waiter()
            await self._send_waiter.wait()
        else:
            await self._session._wait_buffer_space()

    def set_push(self, push: Callable[[memoryview], int] | None) -> bool:
        """Deliver by push: while a task waits in `receive_some` with nothing buffered, data
        that arrives is first offered to ``push`` (None stops it); returns True.

        ``push(data)`` runs in the session's reader task: it must not block or checkpoint,
        and returns how many bytes of ``data`` it took (0 when it can take none now; it must
        not keep ``data``, a view into the transport's read). What it takes is credited
        back to the peer and never returned by `receive_some`; the rest is buffered and
        returned as usual, in order, so the waiting task's own write sees what stopped it.
        If ``push`` raises `OSError`, pushing stops and the data is buffered instead.
        """
        self._push = push
        return True

    # ---- trio.abc.ReceiveStream -------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Up to ``max_bytes`` (default 256 KiB) of what the peer sent; ``b""`` after its FIN.

        Waits until something arrived. Reading credits the peer's send window. Raises
        `StreamReset` (unread data is discarded), `SessionClosed` once what arrived before
        the session ended is read, `trio.ClosedResourceError` after `aclose`.
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        else:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        return await self._receive(max_bytes, self._take)  # type: ignore[return-value]

    async def receive_view(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """As `receive_some`, without copying: the next piece of what arrived, up to
        ``max_bytes`` (``b""`` after the peer's FIN), possibly a read-only view into what the
        session read from its transport, and possibly shorter than what is buffered (one
        piece per call, never joined).

        For a caller that passes the data on at once (a splice into another stream): the
        view stays valid (transports never reuse a buffer they returned), but keeping it
        keeps the whole read it came from. Raises and waits as `receive_some` does.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        return await self._receive(max_bytes, self._take_view)

    async def _receive(
        self, max_bytes: int, take: Callable[[int], bytes | bytearray | memoryview]
    ) -> bytes | bytearray | memoryview:
        with self._receive_conflict:
            await checkpoint_if_cancelled()
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed")
                if self._chunks:
                    data = take(max_bytes)
                    break
                if self._eof:
                    data = b""
                    break
                if self._error is not None:
                    raise fresh(self._error)
                await self._wait_receivable()
                waited = True
            if not waited:
                await cancel_shielded_checkpoint()
            return data

    def _take_view(self, max_bytes: int) -> bytes | bytearray | memoryview:
        chunks = self._chunks
        assert chunks
        head = chunks[0]
        data: bytes | memoryview
        if len(head) > max_bytes:
            view = memoryview(head)
            data = view[:max_bytes]
            chunks[0] = view[max_bytes:]
        else:
            data = chunks.popleft()
        self._session._consumed(self.stream_id, len(data))
        return data

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | bytearray:
        """What `receive_some` would return now, without waiting: up to ``max_bytes`` of
        what arrived (crediting the peer's window), or ``b""`` after the peer's FIN.

        Raises `trio.WouldBlock` when nothing arrived yet, and what `receive_some` raises
        otherwise (`trio.BusyResourceError` while a task is in `receive_some`). Not a
        checkpoint: for a task that reads a request which arrived with the stream's open
        and checkpoints later anyway.
        """
        max_bytes = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        return self._receive_now(max_bytes, self._take)  # type: ignore[return-value]

    def receive_view_nowait(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """What `receive_view` would return now, without waiting: the next piece of what
        arrived, up to ``max_bytes``, without copying (``b""`` after the peer's FIN).

        Raises as `receive_nowait` does (`trio.WouldBlock` when nothing arrived yet). Not a
        checkpoint: for a copy loop that just checkpointed, so that it takes all that was
        buffered meanwhile in one task step and then waits with nothing buffered, when
        push delivery (`set_push`) applies again.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        return self._receive_now(max_bytes, self._take_view)

    def _receive_now(
        self, max_bytes: int, take: Callable[[int], bytes | bytearray | memoryview]
    ) -> bytes | bytearray | memoryview:
        with self._receive_conflict:
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed")
            if self._chunks:
                return take(max_bytes)
            if self._eof:
                return b""
            if self._error is not None:
                raise fresh(self._error)
            raise trio.WouldBlock

    def _take(self, max_bytes: int) -> bytes | bytearray:
        chunks = self._chunks
        assert chunks
        head = chunks[0]
        data: bytes | bytearray
        if len(head) >= max_bytes or len(chunks) == 1:
            if len(head) > max_bytes:
                data = bytes(head[:max_bytes])
                chunks[0] = head[max_bytes:]
            else:
                data = head if type(head) is bytes else bytes(head)
                chunks.popleft()
        else:
            data = bytearray()
            while chunks and len(data) < max_bytes:
                head = chunks[0]
                room = max_bytes - len(data)
                if len(head) > room:
                    data += head[:room]
                    chunks[0] = head[room:]
                else:
                    data += head
                    chunks.popleft()
        self._session._consumed(self.stream_id, len(data))
        return data

    # ---- trio.abc.SendStream ----------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._error is not None:
            raise fresh(self._error)
        if not self._conn.can_send(self.stream_id):
            raise trio.ClosedResourceError("the stream was closed for sending")

    def _queue(self, view: memoryview) -> int:
        """Queue as much of ``view`` as the window and the write buffer take; 0 = wait."""
        conn = self._conn
        config = conn.config
        room = config.write_buffer_size - conn.pending_output()
        if room < min(len(view), config.max_frame_size):
            return 0
        return conn.send_data(self.stream_id, view[:room])

    def _can_send(self) -> bool:
        """Whether one frame's worth can be queued now (window and write buffer)."""
        conn = self._conn
        config = conn.config
        return (
            conn.send_window(self.stream_id) > 0
            and conn.pending_output() + config.max_frame_size <= config.write_buffer_size
        )

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for send window and write-buffer room as needed.

        Returns once the data is queued for the transport (not when the peer has it).
        Raises `StreamReset`, `SessionClosed`, or `trio.ClosedResourceError` after
        `send_eof` or `aclose`. Cancelled midway, part of ``data`` may have been queued.
        """
        with self._send_conflict:
            await checkpoint_if_cancelled()
            self._check_sendable()
            session = self._session
            with memoryview(data) as view:
                view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
                checkpointed = False
                while view:
                    queued = self._queue(view)
                    if queued:
                        view = view[queued:]
                        checkpointed |= await session._flush()
                    else:
                        await self._wait_sendable()
                        checkpointed = True
                    # Also after the last write: a write that failed raises SessionClosed.
                    self._check_sendable()
            if not checkpointed:
                await cancel_shielded_checkpoint()

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as can go now without waiting and return how much that
        was: what the send window and the session's write buffer take (0 when they take
        nothing now; what is not taken is the caller's to keep and send later).

        The session writes it at once from the calling task when no write is in flight and
        its transport can write without waiting (`trio.SocketStream`, or a transport with
        ``send_nowait``); else its writer task does. Never blocks and is not a checkpoint:
        it is the sink of push delivery between two streams (see `set_push`), called from
        a session's reader task. Raises what `send_all` raises (`StreamReset`,
        `SessionClosed`, `trio.ClosedResourceError`), and `trio.BusyResourceError` while
        another task is in `send_all`, `send_eof` or `wait_send_all_might_not_block`.
        """
        if self._send_conflict.held:
            raise trio.BusyResourceError(SENDING)
        self._check_sendable()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            return 0
        queued = self._queue(view)
        if queued:
            self._session._write_now()
        return queued

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until there is send window and write-buffer room for at least one frame.

        Raises as `send_all` does.
        """
        with self._send_conflict:
            await checkpoint_if_cancelled()
            self._check_sendable()
            if self._can_send():
                await cancel_shielded_checkpoint()
            else:
                await self._wait_sendable()
                self._check_sendable()

    async def send_eof(self) -> None:
        """Half-close: send FIN after the data already queued; we may still receive.

        Idempotent. Raises `StreamReset` or `SessionClosed` if the stream is broken,
        `trio.ClosedResourceError` after `aclose`. A checkpoint.
        """
        with self._send_conflict:
            await checkpoint_if_cancelled()
            self._send_eof()
            await cancel_shielded_checkpoint()

    def send_eof_nowait(self) -> None:
        """`send_eof` without the checkpoint (it never waits): for a caller that just
        checkpointed, such as a copy loop whose read returned the end of the data.

        Raises what `send_eof` raises, and `trio.BusyResourceError` while another task is
        in `send_all`, `send_eof` or `wait_send_all_might_not_block`.
        """
        if self._send_conflict.held:
            raise trio.BusyResourceError(SENDING)
        self._send_eof()

    def _send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._error is not None:
            raise fresh(self._error)
        if self._conn.can_send(self.stream_id):
            self._session._send_eof(self.stream_id)

    # ---- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the stream: FIN after the queued data, or RST if received data was left
        unread (as TCP does). Never raises for a broken stream; idempotent; a checkpoint,
        but the stream is closed even if the call is cancelled."""
        self.close()
        await checkpoint()

    def close(self) -> None:
        """`aclose` without the checkpoint: for a caller about to end (or to checkpoint
        anyway), so that closing takes no task switch of its own. Never raises, never
        blocks; idempotent."""
        self._close(reset=bool(self._chunks))

    def reset(self) -> None:
        """Abort the stream at once: the peer's reads and writes fail (RST). Idempotent."""
        self._close(reset=True)

    def _close(self, reset: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._chunks = None
        self._session._close_stream(self, reset=reset or self._error is not None)
        self._wake_receiver()
        self._wake_sender()
