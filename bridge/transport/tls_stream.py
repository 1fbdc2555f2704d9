# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""TLS over a TCP socket as a `trio.abc.Stream`, with OpenSSL doing the socket I/O.

`trio.SSLStream` runs TLS through memory BIOs: every record is copied between Python and
OpenSSL twice and every read or write is several Python-level steps. Here a non-blocking
`ssl.SSLSocket` reads and writes the socket itself, and Trio only waits for readiness
(`wait_readable` / `wait_writable`): the same protocol, at well over twice the throughput.

It also offers `send_some`, a write that either returns how much it sent or raises having
sent nothing, even when cancelled, and `send_nowait`, the same without waiting at all: mux
uses them to write from the sending task directly.
"""

from __future__ import annotations

import socket
import ssl

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

from mux.conflict import RECEIVING, SENDING, ConflictDetector

DEFAULT_RECEIVE_SIZE = 256 * 1024
# The most one OpenSSL write is given: one TLS record's worth. Python's SSL socket asks
# OpenSSL for all-or-nothing writes: a larger write that fills the socket part-way reports
# nothing written, yet OpenSSL has sent some of its records and holds the count, and the
# next write must then be at least that long (else "bad length", the connection lost) and
# begin with the same bytes. One record per write keeps that state to one pending record,
# which a caller resuming with the unsent bytes always satisfies.
# On reads: a read that returns less ended a short record, most likely the last one the peer
# sent (a record after it is read by the next call).
_RECORD = 16 * 1024  # the most plaintext one TLS record carries


class TLSStream(trio.abc.Stream):
    """A TLS connection; build one with `TLSStream.wrap` and call `do_handshake`."""

    def __init__(self, tls_socket: ssl.SSLSocket) -> None:
        self._socket = tls_socket
        self._closed = False
        #: The last read returned less than asked: the socket had nothing more then.
        self._drained = False
        self._send_conflict = ConflictDetector(SENDING)
        self._receive_conflict = ConflictDetector(RECEIVING)

    @classmethod
    def wrap(
        cls,
        tcp: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> TLSStream:
        """Take over ``tcp``'s socket (``tcp`` is unusable afterwards) and wrap it in TLS."""
        family, type_, proto = tcp.socket.family, tcp.socket.type, tcp.socket.proto
        raw = socket.socket(family, type_, proto, fileno=tcp.socket.detach())
        raw.setblocking(False)
        tls_socket = context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
        return cls(tls_socket)

    # ---- what callers of an SSL connection ask about -------------------------------------

    def getpeercert(self, binary_form: bool = False):
        """The peer's certificate, as `ssl.SSLSocket.getpeercert` returns it (DER with
        `binary_form`); None before the handshake."""
        return self._socket.getpeercert(binary_form)

    def version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), None before the handshake."""
        return self._socket.version()

    def getpeername(self) -> tuple:
        """The peer's socket address. Raises OSError once the connection is gone."""
        return self._socket.getpeername()

    def getsockname(self) -> tuple:
        """This end's socket address. Raises OSError once the socket is closed."""
        return self._socket.getsockname()

    # ---- the TLS machinery ------------------------------------------------------------

    async def _retry(self, operation, *args):
        """Run one OpenSSL call until it completes, waiting for whatever it wants. The peer's
        close_notify is ``b""`` for a read, `trio.BrokenResourceError` for anything else."""
        tls_socket = self._socket
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed")
            try:
                return operation(*args)
            except ssl.SSLWantReadError:
                await wait_readable(tls_socket)
            except ssl.SSLWantWriteError:
                await wait_writable(tls_socket)
            except ssl.SSLZeroReturnError:
                if operation == tls_socket.recv:
                    return b""
                raise trio.BrokenResourceError("the peer closed the TLS connection") from None
            except (ssl.SSLError, OSError) as exc:
                if self._closed:
                    raise trio.ClosedResourceError("the TLS stream was closed") from None
                raise trio.BrokenResourceError(f"TLS connection failed: {exc}") from exc

    async def do_handshake(self) -> None:
        """Run the TLS handshake (certificate checks included). Raises `trio.BrokenResourceError`
        with the `ssl.SSLError` as ``__cause__`` when it fails, `trio.ClosedResourceError` when
        the stream is closed meanwhile. Cancelled, it leaves the handshake half done: close the
        stream."""
        await checkpoint_if_cancelled()
        await self._retry(self._socket.do_handshake)
        await cancel_shielded_checkpoint()

    # ---- trio.abc.Stream --------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` (256 KiB by default) of decrypted data: every record readable now, not
        just one; ``b""`` once the peer sent close_notify. Raises ValueError for `max_bytes` < 1,
        `trio.BusyResourceError` when another task is receiving, `trio.BrokenResourceError` when
        the connection fails (a ragged EOF included) and `trio.ClosedResourceError` once closed.
        Cancelled, it returns nothing and loses nothing."""
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            tls_socket = self._socket
            # OpenSSL returns one record per read, and Python allocates the whole size asked
            # for first: asking for more than a record costs an allocation of that size
            # (256 KiB by default: several times the cost of decrypting a small message).
            first = min(max_bytes, _RECORD)
            if self._drained and not self._closed and not tls_socket.pending():
                # The last read took everything there was: wait for more before reading,
                # rather than fail a read first (a failed read is a system call and an
                # exception). The wait is the checkpoint.
                await wait_readable(tls_socket)
                try:
                    # Readable after the wait: the record is usually whole. `read` is what
                    # `recv` calls, without `_retry` and `recv` in between.
                    data = tls_socket.read(first)
                except (ssl.SSLError, OSError, ValueError):
                    # Part of a record, the peer's close_notify, a failure or a close: the
                    # read again, as `_retry` makes of each.
                    data = await self._retry(tls_socket.recv, first)
            else:
                await checkpoint_if_cancelled()
                data = await self._retry(tls_socket.recv, first)
                await cancel_shielded_checkpoint()
            if len(data) >= _RECORD and len(data) < max_bytes:
                # A full record: more are likely ready (a short message is one short record,
                # and looking for another would cost it a failed read).
                data = self._receive_more(data, max_bytes)
            # Short of what was asked: the socket is (most likely) empty now.
            self._drained = len(data) < max_bytes
            return data

    def _receive_more(self, first: bytes, max_bytes: int) -> bytes:
        """Add the records that can be read now without waiting: OpenSSL returns one record
        (16 KiB at most) per read, and each read costs the reader a round of its loop."""
        chunks, total = [first], len(first)
        recv = self._socket.recv
        while total < max_bytes:
            try:
                chunk = recv(min(max_bytes - total, _RECORD))
            except (ssl.SSLError, OSError):
                break  # nothing more now, or an error the next call meets again
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return first if len(chunks) == 1 else b"".join(chunks)

    async def send_some(self, data: bytes | bytearray | memoryview) -> int:
        """Send as much of ``data`` as goes without waiting (at least some: waits for that)
        and return how much; if it raises, nothing was sent. The next write must start with
        the bytes not sent (and take them all, or 16 KiB of them): OpenSSL may hold one
        record of them, encrypted."""
        await checkpoint_if_cancelled()
        with memoryview(data) as view:
            sent = await self._retry(self._socket.send, view[:_RECORD])
            sent += self._send_ready(view[sent:])
        await cancel_shielded_checkpoint()
        return sent

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send as much of ``data`` as the socket takes now, without waiting, and return how
        much (0: nothing can go now). Not a checkpoint; for callers that cannot await (mux
        writes queued frames from whichever task queued them). As with `send_some`, the next
        write must start with the bytes not sent. Raises `trio.BrokenResourceError` when the
        connection fails (nothing was sent then), `trio.ClosedResourceError` once closed."""
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        with memoryview(data) as view:
            try:
                sent = self._socket.send(view[:_RECORD])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return 0
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(f"TLS connection failed: {exc}") from exc
            return sent + self._send_ready(view[sent:])

    def _send_ready(self, view: memoryview) -> int:
        """Send ``view`` one record per call while the socket takes them; how much went.
        Whatever stops it (even an error) is met again by the next write, which starts with
        the bytes not sent, as OpenSSL requires after a wanted read or write."""
        send = self._socket.send
        sent = 0
        while sent < len(view):
            try:
                sent += send(view[sent : sent + _RECORD])
            except (ssl.SSLError, OSError):
                break
        return sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of `data`. Raises `trio.BusyResourceError` when another task is
        sending, `trio.BrokenResourceError` when the connection fails, `trio.ClosedResourceError`
        once closed. Cancelled part-way, an unknown part was sent: the stream is then only good for
        closing, as with any trio stream."""
        with self._send_conflict:
            await checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed")
            with memoryview(data) as view:
                while view:
                    sent = await self._retry(self._socket.send, view[:_RECORD])
                    view = view[sent:]
            await cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket takes writes. Raises `trio.BusyResourceError` when another task is
        sending, `trio.ClosedResourceError` once closed. Cancelling it has no other effect."""
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("the TLS stream was closed")
            await wait_writable(self._socket)

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it at once, then close the socket; tasks blocked on
        the stream get `trio.ClosedResourceError`. Never blocks, never raises for a broken
        connection; closing twice is fine."""
        if not self._closed:
            self._closed = True
            notify_closing(self._socket)
            try:
                self._socket.unwrap()  # sends close_notify if the socket takes it now
            except (ssl.SSLError, OSError, ValueError):
                pass
            self._socket.close()
        await checkpoint()
