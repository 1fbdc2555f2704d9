# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Raw TCP through a forward to servers run by the test: concurrency, half-close, volume."""

from __future__ import annotations

import hashlib
import os

import trio

from .e2e_support import Launcher

CONNECTIONS = 200
GIB = 1 << 30
CHUNK = 1 << 20


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise AssertionError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(CHUNK):
        data += chunk
    return bytes(data)


async def open_tunnel(launch: Launcher, target: str) -> int:
    """A relay forwarding to `target` with a connected agent; returns the forward's port."""
    relay, _ = await trio.to_thread.run_sync(launch.tunnel, [target])
    return relay.forwards[target]


async def test_concurrent_connections(launch: Launcher, tcp_server):
    open_now = most_open = 0

    async def echo(stream: trio.SocketStream) -> None:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            async for chunk in stream:
                await stream.send_all(chunk)
        finally:
            open_now -= 1

    forward = await open_tunnel(launch, await tcp_server(echo))
    echoed = 0
    all_open = trio.Event()

    async def echo_once(stream: trio.SocketStream) -> None:
        payload = os.urandom(16 * 1024)
        await stream.send_all(payload)
        assert await receive_exactly(stream, len(payload)) == payload

    async def client() -> None:
        nonlocal echoed
        async with await trio.open_tcp_stream("127.0.0.1", forward) as stream:
            await echo_once(stream)
            echoed += 1
            if echoed == CONNECTIONS:
                all_open.set()
            await all_open.wait()  # every connection is open at once
            await echo_once(stream)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(client)
    assert most_open == CONNECTIONS


async def test_half_close_by_the_client(launch: Launcher, tcp_server):
    request = os.urandom(3 * CHUNK)
    seen_by_server = []

    async def reply_after_eof(stream: trio.SocketStream) -> None:
        data = await receive_until_eof(stream)  # returns once the client's FIN arrived
        seen_by_server.append(data)
        await stream.send_all(data[::-1])
        # returning closes the connection

    forward = await open_tunnel(launch, await tcp_server(reply_after_eof))
    with trio.fail_after(60):
        async with await trio.open_tcp_stream("127.0.0.1", forward) as stream:
            await stream.send_all(request)
            await stream.send_eof()  # shutdown(SHUT_WR)
            reply = await receive_until_eof(stream)

    assert seen_by_server == [request]
    assert reply == request[::-1]


async def test_half_close_by_the_server(launch: Launcher, tcp_server):
    greeting, request = os.urandom(3 * CHUNK), os.urandom(3 * CHUNK)
    seen_by_server = []
    server_done = trio.Event()

    async def greet_then_listen(stream: trio.SocketStream) -> None:
        await stream.send_all(greeting)
        await stream.send_eof()
        seen_by_server.append(await receive_until_eof(stream))
        server_done.set()

    forward = await open_tunnel(launch, await tcp_server(greet_then_listen))
    with trio.fail_after(60):
        async with await trio.open_tcp_stream("127.0.0.1", forward) as stream:
            assert await receive_until_eof(stream) == greeting  # the server's FIN arrived
            await stream.send_all(request)  # and the other direction is still open
            await stream.send_eof()
            await server_done.wait()

    assert seen_by_server == [request]


async def send_one_gib(stream: trio.abc.HalfCloseableStream) -> str:
    """Sends 1 GiB of random data, then EOF; returns its SHA-256."""
    block = bytearray(os.urandom(CHUNK))
    digest = hashlib.sha256()
    for counter in range(GIB // CHUNK):
        block[:8] = counter.to_bytes(8, "big")  # no two chunks alike
        digest.update(block)
        await stream.send_all(block)
    await stream.send_eof()
    return digest.hexdigest()


async def hash_until_eof(stream: trio.abc.ReceiveStream) -> str:
    """`SIZE SHA256` of everything received."""
    digest, size = hashlib.sha256(), 0
    while chunk := await stream.receive_some(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return f"{size} {digest.hexdigest()}"


async def test_one_gib_to_the_target(launch: Launcher, tcp_server):
    async def hash_sink(stream: trio.SocketStream) -> None:
        await stream.send_all((await hash_until_eof(stream)).encode())

    forward = await open_tunnel(launch, await tcp_server(hash_sink))
    with trio.fail_after(300):
        async with await trio.open_tcp_stream("127.0.0.1", forward) as stream:
            sent = await send_one_gib(stream)
            received = (await receive_until_eof(stream)).decode()

    assert received == f"{GIB} {sent}"


async def test_one_gib_from_the_target(launch: Launcher, tcp_server):
    sent = []
    all_sent = trio.Event()

    async def source(stream: trio.SocketStream) -> None:
        sent.append(await send_one_gib(stream))
        all_sent.set()

    forward = await open_tunnel(launch, await tcp_server(source))
    with trio.fail_after(300):
        async with await trio.open_tcp_stream("127.0.0.1", forward) as stream:
            received = await hash_until_eof(stream)
        await all_sent.wait()

    assert received == f"{GIB} {sent[0]}"
