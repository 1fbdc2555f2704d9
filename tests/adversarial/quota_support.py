# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Hostile clients and measurements for the quota tests: logins with a stolen credential, a
hostile agent speaking yamux itself, descriptor counts, round trips from chosen loopback
source addresses (attackers and victims never share one)."""

from __future__ import annotations

import functools
import os
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import mux
from bridge.protocol.handshake import (
    Hello,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
)

from ..e2e.e2e_support import Launcher, Process, Relay, parse_assignments, relay_cli
from ..faults.traffic import echo  # noqa: F401 (re-exported for the tests)

#: Source addresses: attackers and victims each have their own.
ATTACKER = "127.0.0.2"
VICTIM = "127.0.0.3"


def add_bridge(data_dir: Path, name: str, *, cost: int = 4) -> tuple[str, str]:
    """Another bridge in the relay's data dir: (ID, secret)."""
    created = relay_cli(data_dir, "bridges", "create", name, "--bcrypt-cost", str(cost))
    assert created.returncode == 0, created.stderr
    values = parse_assignments(created.stdout)
    return values["BRIDGE_ID"], values["BRIDGE_SECRET"]


def start_agent(
    launch: Launcher, relay: Relay, name: str, bridge_id: str, secret: str, allow: list[str]
) -> Process:
    """`bridge-agent` for bridge `name` (not the launcher's own), once the relay admitted it."""
    agent = launch.agent(relay, allow, wait=False, BRIDGE_ID=bridge_id, BRIDGE_SECRET=secret)
    agent.wait_for(r"\tHandling incoming proxy connections")
    relay.process.wait_for(rf'\tBridge connected\t.*"bridge": "{re.escape(name)}"')
    return agent


def descriptors(pid: int) -> int:
    """Open file descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


@functools.cache
def insecure_tls() -> ssl.SSLContext:
    """An attacker does not care whom it talks to."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


async def connect_from(source: str, port: int) -> trio.SocketStream:
    """TCP to 127.0.0.1:port from the loopback address `source`."""
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)


async def login(
    port: int, bridge_id: str, secret: str, source: str
) -> tuple[Welcome, trio.SSLStream]:
    """TLS and a Hello to the relay's agent port; the Welcome, and the stream (still open)."""
    tls = trio.SSLStream(await connect_from(source, port), insecure_tls())
    try:
        await tls.do_handshake()
        await tls.send_all(encode_hello(Hello(bridge_id, secret)))
        parser = WelcomeParser()
        while (welcome := parser.feed(await tls.receive_some(4096))) is None:
            pass
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return welcome, tls


@asynccontextmanager
async def hostile_agent(
    port: int, bridge_id: str, secret: str, source: str, config: mux.Config | None = None
) -> AsyncIterator[mux.Session]:
    """A logged-in agent session driven by the test (the client end of yamux)."""
    welcome, tls = await login(port, bridge_id, secret, source)
    assert welcome.status == WelcomeStatus.OK, welcome
    async with tls, mux.open_session(tls, client=True, config=config) as session:
        yield session


async def round_trip(port: int, source: str, size: int = 1024) -> bool:
    """`size` bytes through a forward to an echo target and back, from `source`."""
    payload = os.urandom(size)
    async with await connect_from(source, port) as stream:
        await stream.send_all(payload)
        received = bytearray()
        while len(received) < size and (data := await stream.receive_some(size)):
            received += data
    return bytes(received) == payload


async def socks_login(
    port: int, source: str, user: bytes, password: bytes
) -> tuple[bool, trio.SocketStream]:
    """SOCKS5 greeting and RFC 1929 authentication from `source`: (accepted, the stream)."""
    stream = await connect_from(source, port)
    try:
        await stream.send_all(b"\x05\x01\x02")
        if await receive_exactly(stream, 2) != b"\x05\x02":
            raise AssertionError("the proxy did not ask for a username and password")
        await stream.send_all(
            b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
        )
        answer = await receive_exactly(stream, 2)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return answer == b"\x01\x00", stream


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise AssertionError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
