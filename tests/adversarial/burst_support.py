# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A burst of clients, all connected at once before any of them speaks, each doing one short
echo exchange through a forward or the SOCKS front door; and the relay and agents it goes
through."""

from __future__ import annotations

import os
import re
import resource
from collections import Counter
from functools import partial

import attrs
import trio

from ..e2e.e2e_support import Launcher, Relay
from .quota_support import add_bridge, connect_from, echo, receive_exactly, start_agent

OTHER = "other"  # the bridge whose connections must go on unaffected
PAYLOAD = 64


def raise_descriptor_limit() -> int:
    """The test process holds both ends of a burst: soft RLIMIT_NOFILE up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@attrs.define
class Setup:
    relay: Relay
    target: str  # the echo server, HOST:PORT
    forward: int  # the port of the launcher's bridge's forward to the target
    other_forward: int  # the same for bridge OTHER
    socks: int


async def start(launch: Launcher, nursery: trio.Nursery) -> Setup:
    """An echo target, a relay with a forward to it for two bridges and SOCKS, an agent each."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    other_id, other_secret = await trio.to_thread.run_sync(
        add_bridge, launch.bridge.data_dir, OTHER
    )
    args = ["--socks", "127.0.0.1:0", "--forward", f"{OTHER}={target}"]
    relay = await trio.to_thread.run_sync(partial(launch.relay, target, args=args))
    found = relay.process.wait_for(
        rf"^forward {OTHER} -> {re.escape(target)}: listening on 127\.0\.0\.1:(\d+)$",
        stream="stdout",
    )
    socks = relay.process.wait_for(r"^socks: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    await trio.to_thread.run_sync(
        start_agent, launch, relay, OTHER, other_id, other_secret, [target]
    )
    return Setup(relay, target, relay.forwards[target], int(found[1]), int(socks[1]))


async def socks_request(stream: trio.SocketStream, bridge: str, target: str) -> None:
    """SOCKS5 without authentication, CONNECT to `target` through `bridge`."""
    host, port = target.rsplit(":", 1)
    name = f"{host}.bridge-{bridge}".encode()
    await stream.send_all(b"\x05\x01\x00")
    if await receive_exactly(stream, 2) != b"\x05\x00":
        raise AssertionError("the proxy refused the greeting")
    await stream.send_all(
        b"\x05\x01\x00\x03" + bytes([len(name)]) + name + int(port).to_bytes(2, "big")
    )
    reply = await receive_exactly(stream, 10)
    if reply[1] != 0:
        raise AssertionError(f"SOCKS reply {reply[1]:#04x}")


async def exchange(stream: trio.SocketStream) -> str:
    """One echo exchange: 'served' when the payload came back intact."""
    payload = os.urandom(PAYLOAD)
    await stream.send_all(payload)
    received = bytearray()
    while len(received) < PAYLOAD and (data := await stream.receive_some(PAYLOAD)):
        received += data
    return "served" if bytes(received) == payload else "short"


async def burst(
    count: int, source: str, port: int, *, socks: tuple[str, str] | None = None
) -> Counter[str]:
    """`count` clients from `source` connect to 127.0.0.1:`port`; once all are connected,
    each does its exchange (after a SOCKS request for (bridge, target), if given). The
    outcomes: 'served', 'short', 'reset' (the connection broke), or the error's type."""
    outcomes: Counter[str] = Counter()
    streams: list[trio.SocketStream] = []
    all_connected = trio.Event()

    async def client() -> None:
        try:
            stream = await connect_from(source, port)
        except OSError as exc:
            outcomes[f"connect: {exc.strerror}"] += 1
            stream = None
        else:
            streams.append(stream)
        if len(streams) + sum(outcomes.values()) == count:
            all_connected.set()
        await all_connected.wait()
        if stream is None:
            return
        async with stream:
            try:
                if socks is not None:
                    await socks_request(stream, *socks)
                outcomes[await exchange(stream)] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                outcomes["reset"] += 1
            except AssertionError as exc:
                outcomes[str(exc)] += 1

    async with trio.open_nursery() as clients:
        for _ in range(count):
            clients.start_soon(client)
    return outcomes


async def one_exchange(source: str, port: int, socks: tuple[str, str] | None = None) -> str:
    """One client's exchange (see `burst`)."""
    async with await connect_from(source, port) as stream:
        try:
            if socks is not None:
                await socks_request(stream, *socks)
            return await exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "reset"
