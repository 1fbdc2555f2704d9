# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay connection over WebSocket, for networks that only let HTTPS out.

Binary messages carry the bytes that would otherwise go straight over TLS, and
`WebSocketStream` exposes the connection as a `trio.abc.Stream`, so the handshake, mux and
everything above run unchanged. Clients use `open_websocket_stream` (TCP, possibly through
an HTTP proxy, then TLS, then the upgrade) or `websocket_client` (the upgrade of a TLS
stream already open); servers use `accept_websocket` on each incoming TLS connection.
"""

from __future__ import annotations

import logging
import math
import operator
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, NoReturn, TypedDict, cast
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket
from trio.lowlevel import checkpoint
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, WebSocketConnection

from bridge.protocol.addresses import format_socket_address
from bridge.transport.http_proxy import ProxyURL, open_tcp_stream
from bridge.transport.http_status import status_phrase
from bridge.transport.tls import open_tls_client
from bridge.transport.tls_stream import TLSStream
from bridge.transport.url import split_url
from bridge.validators import positive_count, positive_number
from mux.conflict import RECEIVING, SENDING, ConflictDetector

DEFAULT_PATH = "/bridge"
NORMAL_CLOSURE = 1000

log = logging.getLogger("bridge.websocket")


class _Sizes(TypedDict):
    """The buffer sizes trio-websocket takes as keyword arguments."""

    max_message_size: int
    message_queue_size: int
    receive_buffer_size: int


@attrs.frozen(kw_only=True)
class WebSocketConfig:
    """Sizes are bytes, durations seconds."""

    #: The largest message sent (longer writes are split) and accepted (a larger one ends the
    #: connection with close code 1009): keep it the same on both ends.
    max_message_size: int = attrs.field(default=1024 * 1024, validator=positive_count)
    #: Messages received but not read yet, at most: beyond this the socket is not read.
    message_queue_size: int = attrs.field(default=4, validator=positive_count)
    #: How much one read from the socket asks for (trio-websocket's own default is 4 KiB).
    receive_buffer_size: int = attrs.field(default=256 * 1024, validator=positive_count)
    #: `open_websocket_stream`: TCP connect, including the proxy's CONNECT.
    connect_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: TLS handshake and HTTP upgrade (on the relay: from accepting the connection on).
    handshake_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: How long closing waits for the peer to answer the close frame.
    close_timeout: float = attrs.field(default=5.0, validator=positive_number)

    def _sizes(self) -> _Sizes:
        return {
            "max_message_size": self.max_message_size,
            "message_queue_size": self.message_queue_size,
            "receive_buffer_size": self.receive_buffer_size,
        }


class WebSocketError(Exception):
    """The WebSocket upgrade failed; ``status`` is the HTTP status of a refusal."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WebSocketStream(trio.abc.Stream):
    """A WebSocket connection as a byte stream.

    `send_all` sends binary messages of at most ``max_message_size`` bytes; `receive_some`
    returns what is left of the current message, up to ``max_bytes``. `aclose` closes the
    WebSocket (close code 1000, which the peer reads as EOF) and ``transport``, the stream
    the WebSocket runs on; any other end of the connection is a `trio.BrokenResourceError`.
    """

    def __init__(
        self,
        connection: WebSocketConnection,
        transport: trio.abc.Stream,
        *,
        config: WebSocketConfig,
    ) -> None:
        self.connection = connection
        self.transport = transport
        self._message_size = config.max_message_size
        self._close_timeout = config.close_timeout
        self._pending = memoryview(b"")
        self._eof = False
        self._closed = False
        self._send_conflict = ConflictDetector(SENDING)
        self._receive_conflict = ConflictDetector(RECEIVING)
        self._receive_limit: _ReceiveLimit | None = None

    def lift_receive_limit(self) -> None:
        """Let the peer send as much as it likes from now on (the relay calls this once the
        agent has authenticated; see `accept_websocket`)."""
        if self._receive_limit is not None:
            self._receive_limit.limit = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as binary messages of at most ``max_message_size`` bytes each. Raises
        `trio.BusyResourceError` when another task is sending, `trio.ClosedResourceError` once
        closed, `trio.BrokenResourceError` when the connection ended. Cancelled part-way, some
        messages may have been sent: the stream is then only good for closing."""
        with self._send_conflict:
            if self._closed or not data:
                await checkpoint()
                self._check_open()
                return
            size = self._message_size
            try:
                with memoryview(data) as view:
                    for start in range(0, len(view), size):
                        await self.connection.send_message(bytes(view[start : start + size]))
            except ConnectionClosed as exc:
                await checkpoint()  # a closed connection raises without scheduling
                raise self._closed_error(exc.reason) from None

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport under the WebSocket takes writes (while holding the
        connection's write lock, so the WebSocket's own pongs and close frames never interleave
        with the wait). Raises `trio.BusyResourceError` when another task is sending,
        `trio.ClosedResourceError` once closed; returns when the connection broke (the next
        send says how). Cancelling it has no other effect."""
        with self._send_conflict:
            self._check_open()
            # trio-websocket serialises every write to its stream with this lock; without it
            # (another version of the library) a checkpoint is the honest fallback.
            lock = getattr(self.connection, "_stream_lock", None)
            if lock is None:
                await checkpoint()
                return
            try:
                async with lock:
                    await self.transport.wait_send_all_might_not_block()
            except trio.BrokenResourceError:
                return
            except trio.ClosedResourceError:
                if self._closed:
                    raise trio.ClosedResourceError("the WebSocket stream was closed") from None
                return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` of the current binary message (all of it without `max_bytes`), ``b""``
        once the peer closed with code 1000. Raises ValueError for `max_bytes` < 1,
        `trio.BusyResourceError` when another task is receiving, `trio.BrokenResourceError` for a
        text message or any other end of the connection, `trio.ClosedResourceError` once closed.
        Cancelled, it loses nothing."""
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            if not self._pending:
                message = await self._next_message()
                if max_bytes is None or len(message) <= max_bytes:
                    return message
                self._pending = memoryview(message)
            else:
                await checkpoint()
                self._check_open()
            data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return bytes(data)

    async def _next_message(self) -> bytes:
        """The next binary message that is not empty; b"" once the peer has closed normally."""
        while not (self._eof or self._closed):
            try:
                message = await self.connection.get_message()
            except ConnectionClosed as exc:
                if self._closed or exc.reason is None or exc.reason.code != NORMAL_CLOSURE:
                    await checkpoint()  # a closed connection raises without scheduling
                    raise self._closed_error(exc.reason) from None
                self._eof = True
                break
            if isinstance(message, str):
                raise trio.BrokenResourceError("the peer sent a text message, not binary data")
            if message:
                return message
        await checkpoint()
        self._check_open()
        return b""

    async def aclose(self) -> None:
        """Close the WebSocket, waiting up to ``close_timeout`` for the peer to answer."""
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        self._pending = memoryview(b"")
        try:
            with trio.move_on_after(self._close_timeout):
                await self.connection.aclose()
        finally:
            await trio.aclose_forcefully(self.transport)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream was closed")

    def _closed_error(self, reason: CloseReason | None) -> Exception:
        if self._closed:
            return trio.ClosedResourceError("the WebSocket stream was closed")
        return trio.BrokenResourceError(f"the WebSocket connection ended: {_describe(reason)}")


@asynccontextmanager
async def open_websocket_stream(
    url: str,
    ssl_context: ssl.SSLContext,
    *,
    proxy: ProxyURL | None = None,
    config: WebSocketConfig | None = None,
) -> AsyncIterator[WebSocketStream]:
    """Connect to ``wss://HOST[:PORT][/PATH]`` (port 443, path /bridge by default) and yield
    the stream; leaving the block closes it.

    TCP goes through ``proxy`` when given. The relay's certificate is checked by
    ``ssl_context`` and, for a `PinnedSSLContext`, against its pin before anything is sent.
    Raises OSError (`bridge.transport.http_proxy.ProxyError` included) when TCP fails,
    `trio.BrokenResourceError` when TLS does, `bridge.transport.tls.FingerprintMismatch`,
    `WebSocketError` when the upgrade fails, and `trio.TooSlowError` past ``connect_timeout``
    or a TLS handshake longer than ``handshake_timeout``. Cancelled at any point, it closes
    what it opened.
    """
    host, port, path = _parse_url(url)
    config = config or WebSocketConfig()
    with trio.fail_after(config.connect_timeout):
        tcp = await open_tcp_stream(host, port, proxy=proxy)
    with trio.fail_after(config.handshake_timeout):
        tls = await open_tls_client(tcp, host, ssl_context)
    async with websocket_client(tls, host, port, path, config=config) as stream:
        yield stream


@asynccontextmanager
async def websocket_client(
    transport: trio.abc.Stream,
    host: str,
    port: int,
    path: str = DEFAULT_PATH,
    *,
    config: WebSocketConfig | None = None,
) -> AsyncIterator[WebSocketStream]:
    """Upgrade ``transport``, a TLS stream already open to host:port, to a WebSocket on ``path``.

    Raises `WebSocketError` when the server refuses or closes the connection, or does not
    answer within ``handshake_timeout``. ``transport`` is closed when this raises, when
    the block is left and when it is cancelled.
    """
    config = config or WebSocketConfig()
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(config.handshake_timeout) as upgrade:
                reader = _ReaderTask(nursery, upgrade)
                connection = await trio_websocket.wrap_client_stream(
                    reader.as_nursery(),
                    # trio-websocket declares a socket or SSL stream; it uses only the methods
                    # of trio.abc.Stream.
                    cast("trio.SocketStream", transport),
                    _authority(host, port),
                    path,
                    **config._sizes(),
                )
            if upgrade.cancelled_caught:
                raise _upgrade_error(reader, path, config)
            async with WebSocketStream(connection, transport, config=config) as stream:
                yield stream
    except BaseExceptionGroup as group:
        _raise_single(group)
    finally:
        await trio.aclose_forcefully(transport)


#: Bytes a client may send before its upgrade request is complete: h11's own bound on a
#: request head, which wsproto uses.
UPGRADE_LIMIT = 16 * 1024
#: Bytes of WebSocket framing around one client message (header, length, mask).
FRAME_OVERHEAD = 14


@asynccontextmanager
async def accept_websocket(
    transport: TLSStream,
    *,
    path: str = DEFAULT_PATH,
    config: WebSocketConfig | None = None,
    receive_limit: int | None = None,
) -> AsyncIterator[WebSocketStream]:
    """Server side: the TLS handshake and WebSocket upgrade of an incoming connection, then
    the stream until the block is left (the stream is closed then).

    Upgrades to ``path`` are accepted (with any query); others are refused with 404. No
    deadline of its own: bound it with a cancel scope. With ``receive_limit``, the peer may
    send at most that many bytes after the upgrade until `WebSocketStream.lift_receive_limit`
    (beyond, the connection is not read), so an unauthenticated peer cannot make the server
    hold more than that; before the upgrade it may send at most `UPGRADE_LIMIT` bytes.
    Raises `WebSocketError` (``status`` None) saying why a connection was not accepted;
    ``transport`` is closed when this raises and when the block is left.
    """
    config = config or WebSocketConfig()
    limited = _ReceiveLimit(transport, UPGRADE_LIMIT if receive_limit is not None else None)
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as upgrade:
                reader = _ReaderTask(nursery, upgrade)
                connection = await _upgrade(reader, transport, limited, path, config)
            if upgrade.cancelled_caught:
                raise WebSocketError("no WebSocket upgrade request")
            limited.limit = receive_limit
            async with WebSocketStream(connection, transport, config=config) as stream:
                stream._receive_limit = limited
                yield stream
    except BaseExceptionGroup as group:
        _raise_single(group)
    finally:
        await trio.aclose_forcefully(transport)


async def _upgrade(
    reader: _ReaderTask,
    transport: TLSStream,
    limited: _ReceiveLimit,
    path: str,
    config: WebSocketConfig,
) -> WebSocketConnection:
    try:
        await transport.do_handshake()
        request = await trio_websocket.wrap_server_stream(
            reader.as_nursery(), limited, **config._sizes()
        )
        if urlsplit(request.path).path == path:
            return await request.accept()
        await request.reject(HTTPStatus.NOT_FOUND)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        raise WebSocketError(f"TLS error: {getattr(cause, 'reason', None) or cause}") from None
    except ConnectionClosed:
        raise WebSocketError("connection lost during the WebSocket upgrade") from None
    raise WebSocketError(f"WebSocket upgrade to {request.path[:100]!r} refused with 404")


async def serve_websocket_agents(
    handler: Callable[[WebSocketStream, str], Awaitable[Any]],
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    path: str = DEFAULT_PATH,
    config: WebSocketConfig | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A plain WebSocket server: accept connections over TLS on host:port until cancelled
    (port 0: any free port), and run ``await handler(stream, peer)`` for each upgrade to
    ``path`` (see `accept_websocket`), with the peer's ``ip:port``, within
    ``config.handshake_timeout``. `task_status.started` gets the listeners. Connections that
    fail before the handler runs are logged and dropped. Raises OSError when it cannot
    listen. Cancelling it closes the listeners and cancels the handlers.

    It has no admission control: the relay serves agents with `relay.Relay.serve_websocket`,
    which puts every connection through its gate before TLS.
    """
    config = config or WebSocketConfig()

    async def serve(tcp: trio.SocketStream) -> None:
        try:
            peer = format_socket_address(tcp.socket.getpeername())
        except OSError:  # already gone
            await tcp.aclose()
            return
        transport = TLSStream.wrap(tcp, ssl_context, server_side=True)
        try:
            with trio.CancelScope(deadline=trio.current_time() + config.handshake_timeout) as s:
                async with accept_websocket(transport, path=path, config=config) as stream:
                    s.deadline = math.inf
                    await handler(stream, peer)
            if s.cancelled_caught and s.deadline != math.inf:
                raise WebSocketError("WebSocket upgrade timed out")
        except WebSocketError as exc:
            log.info("Connection dropped", extra={"fields": {"peer": peer, "reason": str(exc)}})

    listeners = await trio.open_tcp_listeners(port, host=host)
    await trio.serve_listeners(serve, listeners, task_status=task_status)


class _ReceiveLimit(trio.abc.Stream):
    """What trio-websocket reads from: ``stream``, of which at most ``limit`` more bytes are
    read (None: no limit); past the limit, reading waits until the limit is raised."""

    def __init__(self, stream: trio.abc.Stream, limit: int | None) -> None:
        self._stream = stream
        self._limit = limit
        self._raised = trio.Event()

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, limit: int | None) -> None:
        self._limit = limit
        self._raised.set()
        self._raised = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while self._limit is not None and self._limit <= 0:
            await self._raised.wait()
        if self._limit is None:
            return await self._stream.receive_some(max_bytes)
        data = await self._stream.receive_some(
            self._limit if max_bytes is None else min(max_bytes, self._limit)
        )
        if self._limit is not None:
            self._limit -= len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _ReaderTask:
    """Stands in for the nursery trio-websocket starts a connection's reader task in.

    Runs the task in ``nursery``, and cancels ``upgrade`` (the opening handshake's scope)
    when the task ends, so that a connection refused or closed during the upgrade fails at
    once instead of when the handshake times out.
    """

    def __init__(self, nursery: trio.Nursery, upgrade: trio.CancelScope) -> None:
        self._nursery = nursery
        self._upgrade = upgrade
        self.ended = False
        self.rejected: ConnectionRejected | None = None

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._nursery.start_soon(self._run, fn, *args)

    def as_nursery(self) -> trio.Nursery:
        """This stand-in, typed as the nursery trio-websocket declares: it only calls
        ``start_soon``."""
        return cast("trio.Nursery", self)

    async def _run(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        except ConnectionRejected as exc:
            self.rejected = exc
        finally:
            self.ended = True
            self._upgrade.cancel()


def _upgrade_error(reader: _ReaderTask, path: str, config: WebSocketConfig) -> WebSocketError:
    if reader.rejected is not None:
        status = reader.rejected.status_code
        return WebSocketError(
            f"WebSocket upgrade to {path} refused: {status} {status_phrase(status)}", status
        )
    if reader.ended:
        return WebSocketError(
            f"the connection was closed during the WebSocket upgrade to {path} "
            "(is this the relay's WebSocket port?)"
        )
    timeout = config.handshake_timeout
    return WebSocketError(f"no answer to the WebSocket upgrade to {path} within {timeout:g} s")


def _raise_single(group: BaseExceptionGroup) -> NoReturn:
    """Raise the one exception of ``group`` as itself, so that errors leave the context
    managers above as they were raised in them; raise a group of several unchanged."""
    if len(group.exceptions) != 1:
        raise group
    exc = group.exceptions[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc


def _parse_url(url: str) -> tuple[str, int, str]:
    """``wss://HOST[:PORT][/PATH]`` -> (host, port, path with any query)."""
    invalid = f"invalid WebSocket URL {url!r}: expected wss://HOST[:PORT][/PATH]"
    parts = split_url(url, {"wss": 443}, invalid)
    path = parts.path or DEFAULT_PATH
    if parts.query:
        path = f"{path}?{parts.query}"
    return parts.host, parts.port, path


def _authority(host: str, port: int) -> str:
    """The Host header: the port is left out when it is the default one."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


def _describe(reason: CloseReason | None) -> str:
    if reason is None:
        return "connection lost"
    text = f"{reason.code} {reason.name}"
    return f"{text}: {reason.reason}" if reason.reason else text
