# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A stream that first returns bytes already read from it, then delegates."""

from __future__ import annotations

import operator

import trio

from mux.conflict import RECEIVING, ConflictDetector


class PrefixedStream(trio.abc.HalfCloseableStream):
    """Wraps ``stream`` so that ``receive_some`` returns ``prefix`` before anything else.

    Used to hand bytes that arrived in the same read as a handshake message to the next
    protocol layer. When ``stream`` offers ``send_some`` (a partial write mux can use to
    write directly), so does the wrapper; likewise ``try_send`` (`mux.Stream.try_send`) and
    ``set_push`` (push delivery, see `mux.Stream.set_push`), which only pushes while a task
    waits in the wrapped stream's ``receive_some``, so never before the prefix is read, and
    ``receive_view`` and ``receive_view_nowait`` (`mux.Stream.receive_view`), after the
    prefix; and ``send_eof_nowait`` (`mux.Stream.send_eof_nowait`).
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self.transport_stream = stream
        self._prefix = memoryview(bytes(prefix))
        self._closed = False
        self._receive_conflict = ConflictDetector(RECEIVING)
        send_some = getattr(stream, "send_some", None)
        if send_some is not None:
            self.send_some = send_some
        set_push = getattr(stream, "set_push", None)
        if set_push is not None:
            self.set_push = set_push
        try_send = getattr(stream, "try_send", None)
        if try_send is not None:
            self.try_send = try_send
        send_eof_nowait = getattr(stream, "send_eof_nowait", None)
        if send_eof_nowait is not None:
            self.send_eof_nowait = send_eof_nowait
        if getattr(stream, "receive_view", None) is not None:
            self.receive_view = self._receive_view
        if getattr(stream, "receive_view_nowait", None) is not None:
            self.receive_view_nowait = self._receive_view_nowait

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send through the wrapped stream; raises and behaves on cancellation as it does."""
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream's."""
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the wrapped stream. Raises TypeError when it cannot half-close, else what its
        ``send_eof`` raises."""
        send_eof = getattr(self.transport_stream, "send_eof", None)
        if send_eof is None:
            raise TypeError(f"{type(self.transport_stream).__name__} cannot half-close")
        await send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The prefix's next bytes (up to `max_bytes`) while any are left, then the wrapped
        stream's. Raises ValueError for `max_bytes` < 1, `trio.BusyResourceError` when another task
        is receiving, `trio.ClosedResourceError` once closed. Cancelled, it consumes nothing."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream was closed")
            if not self._prefix:
                return await self.transport_stream.receive_some(max_bytes)
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            n = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:n], self._prefix[n:]
            return bytes(chunk)

    async def _receive_view(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """The prefix's next bytes while any are left, then the wrapped stream's
        ``receive_view`` (`mux.Stream.receive_view`: no copy). Raises as `receive_some` does."""
        if self._prefix or self._closed:
            return await self.receive_some(max_bytes)
        with self._receive_conflict:
            view: bytes | bytearray | memoryview = await self.transport_stream.receive_view(  # type: ignore[attr-defined]
                max_bytes
            )
            return view

    def _receive_view_nowait(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """The wrapped stream's ``receive_view_nowait`` (`mux.Stream.receive_view_nowait`)
        once the prefix is read; while it is not, `trio.WouldBlock`: the prefix is
        ``receive_view``'s to return. `trio.ClosedResourceError` once closed; otherwise
        raises as the wrapped stream's does."""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._prefix:
            raise trio.WouldBlock
        with self._receive_conflict:
            view: bytes | bytearray | memoryview = self.transport_stream.receive_view_nowait(  # type: ignore[attr-defined]
                max_bytes
            )
            return view

    async def aclose(self) -> None:
        """Drop the prefix and close the wrapped stream (also when cancelled, as trio streams
        do)."""
        self._closed = True
        self._prefix = memoryview(b"")
        await self.transport_stream.aclose()
