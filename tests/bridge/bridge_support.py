# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Helpers of the bridge tests: a throwaway CA, a minimal relay, TCP targets."""

from __future__ import annotations

import fcntl
import math
import ssl
import struct
import termios
from collections.abc import Awaitable, Callable
from functools import partial
from socket import SO_SNDBUF, SOL_SOCKET

import attrs
import trio

import mux
from bridge.protocol.connect import (
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    encode_connect_request,
)
from bridge.protocol.handshake import Hello, HelloParser, Welcome, WelcomeStatus, encode_welcome
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.tls import client_ssl_context
from bridge.transport.tls_stream import TLSStream
from relay.testing import ThrowawayCA

#: The largest TLS record's worth of data.
RECORD = b"x" * 16384


@attrs.frozen
class Certificates:
    """A throwaway CA and a relay certificate it signed for localhost and 127.0.0.1."""

    ca_file: str
    cert_file: str
    key_file: str
    cert_der: bytes

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificates(directory) -> Certificates:
    """A throwaway CA (`relay.testing.ThrowawayCA`) and its relay certificate, written into
    `directory`."""
    authority = ThrowawayCA.create()
    ca, cert, key = authority.write(directory)
    return Certificates(str(ca), str(cert), str(key), authority.cert_der)


BRIDGE_ID = "0db4d173-a5ba-4be9-ae26-beab2f2875ee"
SECRET = "gG8x2PnNTJzDcY0bR9q8WcLq1kq0mQy6YJm2Y3cW4ZA"


@attrs.define
class Tunnel:
    """The relay's end of one tunneled connection."""

    stream: mux.Stream
    reply: ConnectReply
    leftover: bytes


class FakeRelay:
    """The relay side of the protocol on 127.0.0.1, just enough to drive an agent.

    ``welcome(hello)`` decides the answer (default: OK for BRIDGE_ID/SECRET, else
    AUTH_FAILED); authenticated sessions are handed out by `next_session`.
    """

    def __init__(self, certificates: Certificates) -> None:
        self.context = certificates.server_context()
        self.port = 0
        self.hellos: list[Hello] = []
        self.connections = 0
        self.welcome = self.check_credentials
        self._send, self._receive = trio.open_memory_channel[mux.Session](math.inf)

    @staticmethod
    def check_credentials(hello: Hello) -> Welcome:
        if (hello.bridge_id, hello.secret) == (BRIDGE_ID, SECRET):
            return Welcome(WelcomeStatus.OK)
        return Welcome(WelcomeStatus.AUTH_FAILED, "invalid bridge credentials")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        tls = TLSStream.wrap(tcp, self.context, server_side=True)
        async with tls:
            try:
                await tls.do_handshake()
                parser = HelloParser()
                while (hello := parser.feed(data := await tls.receive_some())) is None:
                    if not data:
                        return
            except trio.BrokenResourceError:
                return
            self.hellos.append(hello)
            welcome = self.welcome(hello)
            await tls.send_all(encode_welcome(welcome))
            if welcome.status != WelcomeStatus.OK:
                return
            async with mux.open_session(
                PrefixedStream(tls, parser.leftover), client=False
            ) as session:
                self._send.send_nowait(session)
                try:
                    async for stream in session:  # the agent opens none; wait for the end
                        stream.reset()
                except mux.SessionClosed:
                    pass

    async def next_session(self) -> mux.Session:
        with trio.fail_after(10):
            return await self._receive.receive()

    @staticmethod
    async def open(session: mux.Session, host: str, port: int, early: bytes = b"") -> Tunnel:
        """Open a stream and ask the agent for ``host:port``; returns once it replied."""
        stream = await session.open_stream()
        await stream.send_all(encode_connect_request(ConnectRequest(host, port)) + early)
        parser = ConnectReplyParser()
        with trio.fail_after(10):
            while (reply := parser.feed(data := await stream.receive_some())) is None:
                assert data, "stream ended before the connect reply"
        return Tunnel(stream, reply, parser.leftover)


async def echo(stream: trio.SocketStream) -> None:
    """Echo until EOF, then close."""
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


async def serve(nursery, handler) -> int:
    """Run a TCP server on 127.0.0.1; returns its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def tls_socketpair(
    certificates: Certificates,
) -> tuple[TLSStream, TLSStream, list[tuple[int, int]]]:
    """A client and a server `TLSStream` over a Unix socket pair, after the handshake, with each
    one's descriptor and SO_SNDBUF (for `clog`)."""
    a, b = (trio.SocketStream(sock) for sock in trio.socket.socketpair())
    # TLSStream.wrap keeps the descriptors
    buffers = [(s.socket.fileno(), s.socket.getsockopt(SOL_SOCKET, SO_SNDBUF)) for s in (a, b)]
    context = client_ssl_context(ca_file=certificates.ca_file)
    client = TLSStream.wrap(a, context, server_side=False, server_hostname="localhost")
    server = TLSStream.wrap(b, certificates.server_context(), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server, buffers


async def clog(send_all: Callable[[bytes], Awaitable[None]], fd: int, size: int) -> None:
    """Send whole records until the socket's send buffer is full: the stream is then clogged
    at a record boundary, and the next write, whatever its data, waits for the peer (a write
    cut short would leave OpenSSL waiting to be given the same bytes again).

    A Unix socket takes a write of one record as one buffer, at once, while the bytes it
    holds (SIOCOUTQ) are under its SO_SNDBUF, `size`; at or over it, a write waits."""
    while unsent_bytes(fd) < size:
        await send_all(RECORD)


def unsent_bytes(fd: int) -> int:
    """Bytes of the socket's send buffer not yet read by the peer (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]
