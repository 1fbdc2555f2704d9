# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real `bridge-relay serve` under abuse: garbage instead of TLS, TLS clients that never
finish their handshake, malformed and oversized hellos, and an agent that logs in and then
sends malformed yamux frames. Each is logged and dropped alone; the relay keeps serving,
a real agent's transfer completes intact (SHA-256), and the relay's memory stays bounded."""

from __future__ import annotations

import os
import re
import ssl
import struct
from functools import partial

import trio

from bridge.agent.agent import Agent
from bridge.protocol.handshake import MAGIC, Hello, WelcomeParser, WelcomeStatus, encode_hello
from bridge.transport.tls import client_ssl_context

from ..e2e.e2e_support import Launcher, dropped_by_reason
from .traffic import CHUNK, echo, rss_kib, transfer

STALLED = 100
HANDSHAKE_TIMEOUT = 2
LOG_INTERVAL = 1
RSS_GROWTH_BOUND = 48 * 1024  # KiB


async def closed_by_peer(stream: trio.abc.ReceiveStream) -> bool:
    """Reads until the peer closes (EOF or reset)."""
    try:
        while await stream.receive_some(CHUNK):
            pass
    except (trio.BrokenResourceError, ConnectionError):
        pass
    return True


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def tls_to(port: int, fingerprint: str) -> trio.SSLStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, client_ssl_context(fingerprint=fingerprint))
    await tls.do_handshake()
    return tls


async def welcome_after(tls: trio.SSLStream, hello: bytes) -> WelcomeStatus:
    await tls.send_all(hello)
    parser = WelcomeParser()
    while (welcome := parser.feed(await tls.receive_some())) is None:
        pass
    return welcome.status


def frame(type_: int, flags: int, stream_id: int, length: int, version: int = 0) -> bytes:
    return struct.pack(">BBHII", version, type_, flags, stream_id, length)


MALFORMED_FRAMES = {
    "yamux version 1": frame(0, 0, 1, 0, version=1),
    "frame type 9": frame(9, 0, 0, 0),
    "data for stream 0": frame(0, 0, 0, 5) + b"hello",
    "a stream ID of the relay's": frame(1, 1, 2, 0),
    "window overrun": frame(1, 1, 1, 0) + frame(0, 0, 1, 300_000) + bytes(300_000),
}

ID_AND_SECRET = bytes([1]) + b"a" + bytes([1]) + b"b"
MALFORMED_HELLOS = {
    "bad magic": b"HTTP/1.1 200 OK\r\n\r\n",
    "id length out of range": MAGIC + bytes([1, 200]) + b"x" * 200,
    "info length out of range": MAGIC + bytes([1]) + ID_AND_SECRET + b"\xff\xff",
    "info not JSON": MAGIC + bytes([1]) + ID_AND_SECRET + b"\x04\x00{{{{" + bytes(1200),
    "every field at its longest, a JSON bomb, 64 KiB more": MAGIC
    + bytes([1, 64])
    + b"a" * 64
    + bytes([128])
    + b"b" * 128
    + b"\x04\x00"
    + b"[" * 1024
    + bytes(64 * 1024),
}


async def test_abuse_is_dropped_alone_and_memory_stays_bounded(launch: Launcher, bridge, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            target,
            args=["--handshake-timeout", str(HANDSHAKE_TIMEOUT)],
            env={"RELAY_LOG_INTERVAL": str(LOG_INTERVAL)},
        )
    )
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    forward, pid = relay.forwards[target], relay.process.popen.pid
    assert await transfer(forward, 4 * 1024 * 1024)  # buffers warmed up before measuring
    rss_before = rss_kib(pid)

    progress, finished = trio.Event(), trio.Event()
    long_transfer = []

    async def long_running() -> None:
        long_transfer.append(
            await transfer(forward, 24 * 1024 * 1024, pace=0.01, progress=progress)
        )
        finished.set()

    nursery.start_soon(long_running)
    await progress.wait()

    # 100 TLS clients that send their ClientHello and never go on; garbage instead of TLS.
    hello = client_hello()
    stalled = []
    for _ in range(STALLED):
        stalled.append(tcp := await trio.open_tcp_stream("127.0.0.1", relay.agent_port))
        await tcp.send_all(hello)
    for _ in range(20):
        async with await trio.open_tcp_stream("127.0.0.1", relay.agent_port) as garbage:
            await garbage.send_all(os.urandom(4096))
            assert await closed_by_peer(garbage)
    # Malformed and oversized hellos are answered MALFORMED, a future version with ours.
    for name, raw in MALFORMED_HELLOS.items():
        async with await tls_to(relay.agent_port, bridge.fingerprint) as tls:
            assert await welcome_after(tls, raw) == WelcomeStatus.MALFORMED, name
    async with await tls_to(relay.agent_port, bridge.fingerprint) as tls:
        assert await welcome_after(tls, MAGIC + b"\x07") == WelcomeStatus.UNSUPPORTED_VERSION

    # Meanwhile new agents are admitted and new tunnels work.
    context = client_ssl_context(fingerprint=bridge.fingerprint)
    second = Agent(
        f"tls://127.0.0.1:{relay.agent_port}", bridge.id, bridge.secret, [target], context
    )
    await nursery.start(second.run)
    assert [await transfer(forward, 256 * 1024) for _ in range(4)] == [True] * 4
    assert relay.process.stderr().count("\tBridge connected\t") == 2
    with trio.fail_after(HANDSHAKE_TIMEOUT + 10):  # the stalled ones go at the deadline
        for tcp in stalled:
            assert await closed_by_peer(tcp)
            await tcp.aclose()

    # Valid logins followed by malformed frames: each session is dropped alone.
    for name, raw in MALFORMED_FRAMES.items():
        async with await tls_to(relay.agent_port, bridge.fingerprint) as tls:
            hello_ok = encode_hello(Hello(bridge.id, bridge.secret))
            assert await welcome_after(tls, hello_ok) == WelcomeStatus.OK, name
            try:
                await tls.send_all(raw)
            except trio.BrokenResourceError:
                pass  # dropped before it had read it all
            assert await closed_by_peer(tls), name

    with trio.fail_after(60):
        await finished.wait()
    assert long_transfer == [True]
    assert await transfer(forward, 1024 * 1024)
    growth = rss_kib(pid) - rss_before
    print(f"\nrelay RSS: {rss_before} KiB before, grew by {growth} KiB")
    assert growth < RSS_GROWTH_BOUND

    log = relay.process.stderr()
    await trio.sleep(LOG_INTERVAL + 0.5)  # the drops not logged one by one are summed up
    dropped = dropped_by_reason(relay.process.stderr())
    assert dropped["handshake timed out"] == STALLED
    assert sum(n for reason, n in dropped.items() if reason.startswith("TLS error")) >= 20
    malformed = sum(n for reason, n in dropped.items() if reason.startswith("malformed handshake"))
    assert malformed == len(MALFORMED_HELLOS)
    assert sum(n for reason, n in dropped.items() if reason.startswith("unsupported")) == 1
    broke = re.findall(r"\tWARNING\tBridge disconnected\t.*the peer broke the yamux protocol", log)
    assert len(broke) == len(MALFORMED_FRAMES), log
    assert "Traceback" not in log and "Unexpected error" not in log
    nursery.cancel_scope.cancel()
