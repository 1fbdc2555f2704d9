# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""No head-of-line blocking: through one tunnel (real relay and agent processes), a stream
whose client never reads and one whose target never reads stall alone; other streams on the
same tunnel complete intact, and the stalled ones buffer no more than their windows."""

from __future__ import annotations

import os
from functools import partial

import attrs
import trio

from ..e2e.e2e_support import Launcher
from .traffic import CHUNK, echo, rss_kib, transfer

TRANSFERS, SIZE = 4, 8 * 1024 * 1024
RSS_GROWTH_BOUND = 32 * 1024  # KiB
# What may sit in kernel socket buffers and stream windows along a stalled path; without
# flow control per stream the stalled ones would have moved everything they were offered.
STALLED_BOUND = 48 * 1024 * 1024


@attrs.define
class Targets:
    """An echo, a flood (sends forever, never reads) and a sink (accepts, never reads)."""

    ports: dict[str, int] = attrs.field(factory=dict)
    flooded: int = 0

    async def start(self, nursery: trio.Nursery) -> Targets:
        for name in ("echo", "flood", "sink"):
            handler = echo if name == "echo" else getattr(self, name)
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            self.ports[name] = listeners[0].socket.getsockname()[1]
        return self

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    async def flood(self, stream: trio.SocketStream) -> None:
        block = os.urandom(CHUNK)
        async with stream:
            try:
                while True:
                    await stream.send_all(block)
                    self.flooded += len(block)
            except trio.BrokenResourceError:
                pass

    async def sink(self, stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()


async def test_a_stalled_stream_does_not_block_the_others(launch: Launcher, nursery):
    targets = await Targets().start(nursery)
    names = ("echo", "flood", "sink")
    relay = await trio.to_thread.run_sync(launch.relay, *map(targets.address, names))
    agent = await trio.to_thread.run_sync(launch.agent, relay, list(map(targets.address, names)))
    forward = {name: relay.forwards[targets.address(name)] for name in names}
    pids = {"relay": relay.process.popen.pid, "agent": agent.popen.pid}
    assert await transfer(forward["echo"], SIZE)  # warmed up before measuring
    rss_before = {name: rss_kib(pid) for name, pid in pids.items()}

    # A client that never reads what the flood sends; one whose target never reads.
    never_reads = await trio.open_tcp_stream("127.0.0.1", forward["flood"])
    uploaded = 0

    async def upload_forever() -> None:
        nonlocal uploaded
        async with await trio.open_tcp_stream("127.0.0.1", forward["sink"]) as stream:
            block = os.urandom(CHUNK)
            while True:
                await stream.send_all(block)
                uploaded += len(block)

    nursery.start_soon(upload_forever)
    while targets.flooded < 4 * CHUNK or uploaded < 4 * CHUNK:
        await trio.sleep(0.05)

    results = []

    async def one() -> None:
        results.append(await transfer(forward["echo"], SIZE))

    async with trio.open_nursery() as running:
        for _ in range(TRANSFERS):
            running.start_soon(one)
    assert results == [True] * TRANSFERS
    assert targets.flooded < STALLED_BOUND and uploaded < STALLED_BOUND
    for name, pid in pids.items():
        growth = rss_kib(pid) - rss_before[name]
        print(
            f"\n{name} RSS grew by {growth} KiB; stalled: {targets.flooded} B flooded, "
            f"{uploaded} B uploaded"
        )
        assert growth < RSS_GROWTH_BOUND, name
    await never_reads.aclose()
    nursery.cancel_scope.cancel()
