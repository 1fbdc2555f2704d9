# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Hostile clients of the relay's agent listeners and the measurements of the admission
tests: each client binds its source address to a loopback address of its own (127.0.0.x),
so that attackers and victims are distinct sources to the relay."""

from __future__ import annotations

import functools
import socket
import ssl
from collections import Counter
from collections.abc import Callable

import trio
import trio_websocket

from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello

VICTIM = "127.0.0.1"  # what a client connecting to 127.0.0.1 gets by default


def attacker(n: int) -> str:
    """The source address of attacker `n` (1..250): 127.0.0.(n + 1)."""
    return f"127.0.0.{n + 1}"


async def connect_from(source: str, port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection to host:port from `source` (any free port)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@functools.cache
def client_context() -> ssl.SSLContext:
    """TLS without verification (these clients test admission, not certificates), made once:
    making a context is slow enough to stall a few hundred clients."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def closed_by_peer(stream: trio.abc.ReceiveStream) -> None:
    """Reads until the peer closes (EOF or reset)."""
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def login(
    port: int,
    bridge_id: str,
    secret: str,
    *,
    source: str = VICTIM,
    prefix: bytes = b"",
    deadline: float = 10.0,
) -> WelcomeStatus | str:
    """One agent login (TCP, `prefix`, TLS, Hello): the Welcome's status, or what went wrong
    instead ("timeout", "closed", ...)."""
    with trio.move_on_after(deadline):
        try:
            tcp = await connect_from(source, port)
            if prefix:
                await tcp.send_all(prefix)
            async with trio.SSLStream(tcp, client_context()) as tls:
                await tls.send_all(encode_hello(Hello(bridge_id, secret)))
                parser = WelcomeParser()
                while (welcome := parser.feed(await tls.receive_some())) is None:
                    pass
                return welcome.status
        except (trio.BrokenResourceError, OSError) as exc:
            return f"closed ({type(exc).__name__})"
    return "timeout"


async def hold_connections(
    count: int,
    source: str,
    port: int,
    opened: list[int],
    *,
    first: bytes = b"",
    pause: float = 0.01,
) -> None:
    """`count` connections from `source` that send `first` (maybe nothing) and then stay
    idle; each one the relay closes is opened again after `pause` seconds, until cancelled.
    `opened[0]` counts the connections made."""

    async def one() -> None:
        while True:
            try:
                stream = await connect_from(source, port)
            except OSError:
                await trio.sleep(0.01)
                continue
            opened[0] += 1
            async with stream:
                if first:
                    try:
                        await stream.send_all(first)
                    except trio.BrokenResourceError:
                        continue
                await closed_by_peer(stream)
            await trio.sleep(pause)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


async def websocket_upgrade(
    nursery: trio.Nursery, source: str, port: int
) -> trio_websocket.WebSocketConnection:
    """TCP from `source`, TLS and the WebSocket upgrade to /bridge; the connection's reader
    task runs in `nursery`."""
    tcp = await connect_from(source, port)
    tls = trio.SSLStream(tcp, client_context(), server_hostname="localhost")
    return await trio_websocket.wrap_client_stream(nursery, tls, "localhost", "/bridge")


def matching(counts: Counter[str], predicate: Callable[[str], bool]) -> int:
    return sum(n for reason, n in counts.items() if predicate(reason))
