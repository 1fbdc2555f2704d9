# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Helpers of the bridge tests: a throwaway CA, a minimal relay, TCP targets."""

from __future__ import annotations

import math
import ssl
from functools import partial

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
from bridge.transport.tls_stream import TLSStream
from relay.testing import ThrowawayCA


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
