# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import ssl
import struct
import termios
from functools import partial
from socket import SO_SNDBUF, SOL_SOCKET

import pytest
import trio
import trio.testing

from bridge.transport.tls import client_ssl_context
from bridge.transport.tls_stream import TLSStream

RECORD = b"x" * 16384  # the largest TLS record's worth of data


@pytest.fixture
def make_pair(certificates):
    client_context = client_ssl_context(ca_file=certificates.ca_file)
    server_context = certificates.server_context()

    async def make_pair(*, clogged: bool = False) -> tuple[TLSStream, TLSStream]:
        """A client and a server stream after the handshake; `clogged`: neither can send
        without waiting for the other to receive."""
        a, b = (trio.SocketStream(sock) for sock in trio.socket.socketpair())
        # TLSStream.wrap keeps the descriptors
        buffers = [(s.socket.fileno(), s.socket.getsockopt(SOL_SOCKET, SO_SNDBUF)) for s in (a, b)]
        client = TLSStream.wrap(a, client_context, server_side=False, server_hostname="localhost")
        server = TLSStream.wrap(b, server_context, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        if clogged:
            for stream, (fd, size) in zip((client, server), buffers):
                await clog(stream, fd, size)
        return client, server

    return make_pair


async def clog(stream: TLSStream, fd: int, size: int) -> None:
    """Send whole records until the socket's send buffer is full: the stream is then clogged
    at a record boundary, and the next write, whatever its data, waits for the peer (a write
    cut short would leave OpenSSL waiting to be given the same bytes again).

    A Unix socket takes a write of one record as one buffer, at once, while the bytes it
    holds (SIOCOUTQ) are under its SO_SNDBUF, `size`; at or over it, a write waits."""
    while _unsent(fd) < size:
        await stream.send_all(RECORD)


def _unsent(fd: int) -> int:
    """Bytes of the socket's send buffer not yet read by the peer (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]


async def test_passes_trios_two_way_stream_checks(make_pair) -> None:
    with trio.fail_after(30):
        await trio.testing.check_two_way_stream(make_pair, partial(make_pair, clogged=True))


async def test_large_transfer_both_ways_is_intact(make_pair) -> None:
    client, server = await make_pair()
    payload = os.urandom(1024 * 1024) * 8

    async def pump(sender: TLSStream, receiver: TLSStream) -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send_all, payload)
            digest, received = hashlib.sha256(), 0
            while received < len(payload):
                chunk = await receiver.receive_some()
                digest.update(chunk)
                received += len(chunk)
        return digest.hexdigest()

    with trio.fail_after(30):
        assert await pump(client, server) == hashlib.sha256(payload).hexdigest()
        assert await pump(server, client) == hashlib.sha256(payload).hexdigest()
    assert client.version() in ("TLSv1.2", "TLSv1.3")


async def test_send_some_reports_what_it_sent(make_pair) -> None:
    client, server = await make_pair()
    data = b"x" * 100_000
    sent = await client.send_some(data)
    assert 0 < sent <= len(data)
    received = bytearray()
    while len(received) < sent:
        received += await server.receive_some()
    assert received == data[:sent]


async def test_untrusted_certificate_fails_the_handshake(certificates) -> None:
    a, b = (trio.SocketStream(sock) for sock in trio.socket.socketpair())
    client = TLSStream.wrap(
        a, ssl.create_default_context(), server_side=False, server_hostname="localhost"
    )
    server = TLSStream.wrap(b, certificates.server_context(), server_side=True)

    async def serve_handshake() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await server.do_handshake()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_handshake)
            with pytest.raises(trio.BrokenResourceError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.do_handshake()
            await client.aclose()
