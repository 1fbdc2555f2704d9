# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Splicing two byte streams: what both ends do with a tunneled connection once it is open."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled, wait_readable

from mux.session import nowait_sender

#: How much one read asks for, by default: large reads mean fewer frames per byte.
CHUNK = 256 * 1024

#: What a read of a plain TCP source asks for while the data comes in small pieces.
SOCKET_READ = 64 * 1024

#: Called with the size of each chunk passed on in one direction (a metrics counter's ``inc``).
Meter = Callable[[int], object]


async def splice(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    *,
    chunk: int = CHUNK,
    meters: tuple[Meter, Meter] | None = None,
) -> tuple[int, int, bool]:
    """Copy ``a -> b`` and ``b -> a`` until both directions reached EOF, passing each EOF on
    as a half-close (``send_eof``).

    Returns ``(bytes a -> b, bytes b -> a, clean)``. ``chunk`` is the most one read asks for;
    ``meters``, if given, are called with each chunk's size once it was sent on (``a -> b``
    first). The direction ``a -> b`` is copied in the calling task and ``b -> a`` in one
    child task: one task fewer per connection than a task per direction.

    Push delivery: where the source can push (a mux stream, `mux.Stream.set_push`) and the
    sink can take data without waiting (a plain TCP socket, or a mux stream's
    `mux.Stream.try_send`), data the source receives while its copying task waits is handed
    to the sink by the source's reader at once (no task switch); what the sink cannot take
    then is copied by the task as usual, so flow control and backpressure stay the sink's.

    When either side breaks or is closed (`trio.BrokenResourceError`, which a reset mux
    stream raises, or `trio.ClosedResourceError`), both directions stop at once and
    ``clean`` is False; nothing is raised for that, and both streams are left open for the
    caller to reset or close. Any other exception propagates (inside an `ExceptionGroup`
    when the child task raised it).

    Cancellation: cancelling the caller stops both directions and raises `trio.Cancelled`;
    what was sent before stays sent, and the streams are left as they are.
    """
    counts = [0, 0]
    clean = True

    async def pump(
        source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, index: int
    ) -> None:
        nonlocal clean
        meter = None if meters is None else meters[index]
        set_push = _push_setter(source, sink, counts, index, meter)
        receive, try_send = _receiver(source, sink)
        try:
            while data := await receive(chunk):
                if try_send is not None:
                    # Queued and written from this task without a checkpoint of its own
                    # (the read was one); only what the sink cannot take now waits.
                    taken = try_send(data)
                    if taken < len(data):
                        await sink.send_all(memoryview(data)[taken:])
                else:
                    await sink.send_all(data)
                counts[index] += len(data)
                if meter is not None:
                    meter(len(data))
            # The read of the end was the checkpoint: the EOF goes out without another one
            # where the sink can send it without waiting.
            send_eof_nowait = _eof_sender(sink)
            if send_eof_nowait is not None:
                send_eof_nowait()
            else:
                await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            clean = False
            nursery.cancel_scope.cancel()
        finally:
            if set_push is not None:
                set_push(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, b, a, 1)
        await pump(a, b, 0)  # in this task: one task fewer per connection
    return counts[0], counts[1], clean


async def send_eagerly(stream: trio.abc.SendStream, data: bytes | bytearray) -> None:
    """Send `data` as ``stream.send_all`` does, but where the stream can take it all at once
    without waiting (`mux.Stream.try_send`: the send window and the session's write buffer
    have room), queue and write it from this task with no task switch: a request or answer
    at the start of a stream, where a checkpoint follows soon anyway. Raises what
    ``send_all`` raises; only the rest of what ``try_send`` did not take is a checkpoint."""
    try_send = getattr(stream, "try_send", None)
    taken = 0 if try_send is None else try_send(data)
    if taken < len(data):
        await stream.send_all(memoryview(data)[taken:])


def _push_setter(
    source: trio.abc.ReceiveStream,
    sink: trio.abc.SendStream,
    counts: list[int],
    index: int,
    meter: Meter | None,
) -> Callable[[Callable[[memoryview], int] | None], object] | None:
    """Set up push delivery from ``source`` straight into ``sink``, if both allow it;
    returns the source's ``set_push`` (to stop it with None), or None."""
    set_push = getattr(source, "set_push", None)
    if set_push is None:
        return None
    send = _nonblocking_send(sink)
    if send is None:
        return None

    def push(data: memoryview) -> int:
        taken = send(data)
        if taken:
            counts[index] += taken
            if meter is not None:
                meter(taken)
        return taken

    return set_push if set_push(push) else None


def _receiver(
    source: trio.abc.ReceiveStream, sink: trio.abc.SendStream
) -> tuple[
    Callable[[int], Awaitable[bytes | bytearray | memoryview]],
    Callable[[bytes | bytearray | memoryview], int] | None,
]:
    """How ``pump`` reads ``source``, and the sink's ``try_send`` if the pump may use it.

    The read is ``source.receive_some``; for a source with ``receive_view`` (a mux stream,
    `mux.Stream.receive_view`, also through the wrappers that pass it on), that read, which
    hands on what the stream's session read without copying it, and after the first read,
    whatever is buffered already without a checkpoint (`mux.Stream.receive_view_nowait`:
    the sink's write, or the last waiting read, was one); for a plain TCP socket, a
    read that waits for
    data first when the last read emptied the socket (trio's own read tries first, and on a
    connection that carries messages back and forth that try fails, a system call and an
    exception for every message). That read is a full checkpoint, so that the sink's
    ``try_send`` (`mux.Stream.try_send`: queue and write without waiting, no checkpoint)
    can carry what it read: one task step per message instead of two. Raises as
    ``receive_some`` does."""
    if type(source) is not trio.SocketStream:
        receive_view = getattr(source, "receive_view", None)
        if receive_view is None:
            return source.receive_some, None
        # A mux stream: its pieces as they arrived, without a copy, and its read is a full
        # checkpoint, so the sink's try_send may carry them.
        sink_try_send = getattr(sink, "try_send", None)
        receive_now = getattr(source, "receive_view_nowait", None)
        if receive_now is None:
            return receive_view, sink_try_send
        started = False

        async def receive_buffered(size: int) -> bytes | bytearray | memoryview:
            nonlocal started
            # After the first read, what was buffered while this task last waited or
            # yielded is taken without a checkpoint of its own (that was one), all of it
            # before the next wait: a read that checkpointed for each piece gave the
            # source's reader a turn to buffer the next one, so that this task never
            # waited with nothing buffered, when push delivery would apply. The data
            # this takes without waiting is bounded by the source's receive window.
            if started:
                try:
                    return receive_now(size)
                except trio.WouldBlock:
                    pass
            started = True
            return await receive_view(size)

        return receive_buffered, sink_try_send
    raw = getattr(source.socket, "_sock", None)
    if not isinstance(raw, socket.socket):  # pragma: no cover - trio's layout changed
        return source.receive_some, None
    try_send = getattr(sink, "try_send", None)
    drained = False
    full = False
    first = True

    async def receive(size: int) -> bytes:
        nonlocal drained, full, first
        # Python allocates all of the size asked for before the read: past the allocator's
        # small sizes that costs system calls, several times a small message's read. Ask
        # for SOCKET_READ unless the last read filled what it asked for (bulk data).
        ask = size if full else min(size, SOCKET_READ)
        if drained:
            await wait_readable(raw)  # the checkpoint
        elif first:
            # The first read: data already there is taken at once, and none is waited for
            # (the wait is the checkpoint) instead of a schedule point before a failed read.
            # A read that found data is followed by another read, a checkpoint.
            first = False
        elif try_send is not None:
            await checkpoint()
        else:
            await checkpoint_if_cancelled()  # the caller's send_all is the schedule point
        while True:
            try:
                data = raw.recv(ask)
            except BlockingIOError:
                await wait_readable(raw)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc
            full = len(data) == ask
            drained = not full
            return data

    return receive, try_send


def _eof_sender(sink: trio.abc.SendStream) -> Callable[[], None] | None:
    """A half-close of ``sink`` that never waits and is not a checkpoint, or None where it
    has none: a plain TCP socket's ``shutdown`` (its errors raised as
    `trio.BrokenResourceError`, as `trio.SocketStream.send_eof` does), or a mux stream's
    `mux.Stream.send_eof_nowait` (also through the wrappers that pass it on)."""
    if type(sink) is trio.SocketStream:
        tsock = sink.socket

        def shutdown() -> None:
            if tsock.did_shutdown_SHUT_WR:
                return
            try:
                tsock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc

        return shutdown
    return getattr(sink, "send_eof_nowait", None)


def _nonblocking_send(sink: trio.abc.SendStream) -> Callable[[memoryview], int] | None:
    """A write into ``sink`` that never blocks and returns how much it took (0: none now),
    or None where the sink has none: a plain TCP socket's own send (`mux.session.nowait_sender`,
    only for a socket: its OSError stops pushing), or a mux stream's `try_send` (also through
    the wrappers that pass it on). A broken or busy mux stream takes nothing, so that the
    copying task's own write meets what stopped it."""
    if type(sink) is trio.SocketStream:
        return nowait_sender(sink)
    try_send = getattr(sink, "try_send", None)
    if try_send is None:
        return None

    def send_stream(data: memoryview) -> int:
        try:
            return int(try_send(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return 0

    return send_stream


async def splice_tunnel(
    local: trio.abc.HalfCloseableStream,
    tunnel: trio.abc.HalfCloseableStream,
    *,
    chunk: int = CHUNK,
    meters: tuple[Meter, Meter] | None = None,
) -> tuple[int, int, bool]:
    """`splice` ``local`` with ``tunnel``, then, unless both directions ended cleanly, reset
    ``tunnel`` (`reset_stream`) and make ``local``'s close a TCP reset (`abort_socket`), so
    that neither far end sees a cut as a clean end of the data.

    Returns and raises what `splice` does. Cancelled (a relay's drain running out, say), it
    does the same to both ends (a cut short by cancellation is not an end of the data) and
    raises `trio.Cancelled`.
    """
    try:
        sent, received, clean = await splice(local, tunnel, chunk=chunk, meters=meters)
    except trio.Cancelled:
        reset_stream(tunnel)
        abort_socket(local)
        raise
    if not clean:
        reset_stream(tunnel)
        abort_socket(local)
    return sent, received, clean


def abort_socket(stream: trio.abc.Stream) -> None:
    """Make the close of a TCP stream a reset (SO_LINGER 0) rather than a clean FIN, so that
    its peer sees a cut, never a complete end of the data; any other stream is left alone.
    Never blocks, never raises (a socket already closed or broken has nothing to abort)."""
    if type(stream) is not trio.SocketStream:
        return
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass


#: SO_LINGER on, 0 seconds: close() sends RST and drops what is unsent.
_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset_stream(stream: trio.abc.Stream | None) -> None:
    """Abort a tunneled stream (a yamux RST), also through wrappers that keep the stream
    they wrap as ``transport_stream`` (such as `PrefixedStream`); a stream with nothing to
    reset is left alone. Never blocks, never raises for a stream already reset or closed."""
    while stream is not None and not hasattr(stream, "reset"):
        stream = getattr(stream, "transport_stream", None)
    if stream is not None:
        stream.reset()
