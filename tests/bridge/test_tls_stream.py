# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from bridge.transport.tls_stream import TLSStream

from .bridge_support import clog, tls_socketpair


@pytest.fixture
def make_pair(certificates):
    async def make_pair(*, clogged: bool = False) -> tuple[TLSStream, TLSStream]:
        """A client and a server stream after the handshake; `clogged`: neither can send
        without waiting for the other to receive."""
        client, server, buffers = await tls_socketpair(certificates)
        if clogged:
            for stream, (fd, size) in zip((client, server), buffers):
                await clog(stream.send_all, fd, size)
        return client, server

    return make_pair


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


async def test_sending_after_the_peer_closed_is_a_broken_stream(make_pair) -> None:
    client, server = await make_pair()
    await server.aclose()  # close_notify
    assert await client.receive_some() == b""
    for send in (client.send_all, client.send_some):
        with pytest.raises(trio.BrokenResourceError, match="closed the TLS connection"):
            await send(b"after the end")


async def test_a_shorter_write_after_a_partial_send_some_is_intact(make_pair) -> None:
    """send_some stopped by a full socket returns what it sent; cancelled, it sent nothing;
    the rest then goes in 64 KiB pieces (as mux's writer resumes): every byte arrives once,
    in order, and the connection is not lost ("bad length")."""
    client, server = await make_pair()
    data = os.urandom(4 * 1024 * 1024)
    with trio.fail_after(10):
        sent = await client.send_some(data)
    assert 0 < sent < len(data)
    with trio.move_on_after(0.2) as waited:
        sent += await client.send_some(data[sent:])
    assert waited.cancelled_caught

    async def send_rest() -> None:
        for start in range(sent, len(data), 64 * 1024):
            await client.send_all(data[start : start + 64 * 1024])

    assert await receive_while(server, len(data), send_rest) == data


async def receive_while(
    receiver: TLSStream, size: int, send: Callable[[], Awaitable[None]]
) -> bytearray:
    """What ``receiver`` gets, ``size`` bytes, while ``send`` runs."""
    received = bytearray()

    async def receive() -> None:
        while len(received) < size:
            received.extend(await receiver.receive_some())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await send()
    return received


async def test_send_nowait_sends_what_goes_now_and_the_rest_is_intact(make_pair) -> None:
    """send_nowait takes what the socket takes without waiting (0 once it is full), and a
    write resuming with the bytes not sent delivers every byte once, in order."""
    client, server = await make_pair()
    data = os.urandom(4 * 1024 * 1024)
    sent = client.send_nowait(data)
    assert 0 < sent < len(data)
    assert client.send_nowait(data[sent:]) == 0  # full: nothing more goes now
    received = await receive_while(server, len(data), partial(client.send_all, data[sent:]))
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_send_nowait_raises_for_a_broken_or_closed_stream(make_pair) -> None:
    client, server = await make_pair()
    await server.aclose()
    assert await client.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError, match="TLS connection failed"):
        client.send_nowait(b"after the end")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        client.send_nowait(b"after close")
