# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""splice between a mux stream and a TCP socket on loopback: push delivery keeps every byte,
the half-close and the reset."""

from __future__ import annotations

import hashlib
import random
import socket

import pytest
import trio
import trio.testing

import mux
from bridge.ops.metrics import TunnelMetrics
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.splice import splice, splice_tunnel

MIB = 1024 * 1024


async def mux_pair(nursery: trio.Nursery) -> tuple[mux.Stream, mux.Stream]:
    """A stream opened and accepted over a session pair on a socketpair."""

    async def run(*, task_status: trio.TaskStatus[tuple[mux.Session, mux.Session]]) -> None:
        left, right = trio.socket.socketpair()
        async with (
            mux.open_session(trio.SocketStream(left), client=True) as client,
            mux.open_session(trio.SocketStream(right), client=False) as server,
        ):
            task_status.started((client, server))
            await trio.sleep_forever()

    client, server = await nursery.start(run)
    opened = await client.open_stream()
    return opened, await server.accept_stream()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a loopback TCP connection, with small buffers so that pushes fill them."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        near = await trio.open_tcp_stream("127.0.0.1", port)
        far = await listener.accept()
    for end in (near, far):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return near, far


async def digest_of(stream: trio.abc.ReceiveStream, slow: bool = False) -> str:
    digest = hashlib.sha256()
    while chunk := await stream.receive_some(65536):
        digest.update(chunk)
        if slow:
            await trio.lowlevel.checkpoint()  # lagging behind, so the socket fills
    return digest.hexdigest()


async def send_then_eof(stream: trio.abc.HalfCloseableStream, payload: bytes) -> None:
    rng = random.Random(len(payload))
    view = memoryview(payload)
    while view:
        size = rng.randrange(1, 100_000)
        await stream.send_all(view[:size])
        view = view[size:]
    await stream.send_eof()


def wrap(stream: mux.Stream, how: str) -> trio.abc.HalfCloseableStream:
    if how == "metered":
        return TunnelMetrics().opened(stream, "b", 0.0)
    if how == "prefixed":
        return PrefixedStream(stream, b"")
    return stream


@pytest.mark.parametrize("how", ["plain", "metered", "prefixed"])
async def test_splice_keeps_every_byte_both_ways_with_push_delivery(nursery, how):
    rng = random.Random(7)
    down, up = rng.randbytes(4 * MIB), rng.randbytes(2 * MIB)
    opened, accepted = await mux_pair(nursery)
    near, far = await tcp_pair()
    tunnel = wrap(accepted, how)
    results: dict[str, object] = {}

    async def run_splice() -> None:
        results["splice"] = await splice(tunnel, near)

    async def far_end() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, far, up)
            results["far"] = await digest_of(far, slow=True)

    async def mux_end() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, opened, down)
            results["mux"] = await digest_of(opened)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_splice)
        nursery.start_soon(far_end)
        nursery.start_soon(mux_end)
    assert results["far"] == hashlib.sha256(down).hexdigest()
    assert results["mux"] == hashlib.sha256(up).hexdigest()
    assert results["splice"] == (len(down), len(up), True)
    if how == "metered":
        assert tunnel.bytes_received == len(down)
        assert tunnel.bytes_sent == len(up)


async def test_splice_passes_a_reset_on_and_stops_pushing(nursery):
    opened, accepted = await mux_pair(nursery)
    near, far = await tcp_pair()
    outcome: list[bool] = []

    async def run() -> None:
        outcome.append((await splice_tunnel(near, accepted))[2])

    async with trio.open_nursery() as splicing:
        splicing.start_soon(run)
        await opened.send_all(b"before the reset")
        assert await far.receive_some() == b"before the reset"  # pushed
        assert accepted._push is not None
        opened.reset()
    assert outcome == [False]
    assert accepted._push is None
    await near.aclose()
    with pytest.raises(trio.BrokenResourceError):  # the cut reaches the socket's peer too
        await far.receive_some()


@pytest.mark.parametrize("how", ["plain", "metered", "prefixed"])
async def test_splice_of_two_mux_streams_pushes_both_ways_and_keeps_every_byte(nursery, how):
    """Between two mux streams (a relay node's peer link and an agent's session), each
    direction is pushed by the source's reader into the sink's `try_send`; flow control
    holds what the sink cannot take, and every byte arrives once, in order."""
    rng = random.Random(8)
    down, up = rng.randbytes(4 * MIB), rng.randbytes(3 * MIB)
    near_far, near = await mux_pair(nursery)
    far, far_near = await mux_pair(nursery)
    tunnel = wrap(far_near, how)
    results: dict[str, object] = {}
    pushing: list[bool] = []

    async def run_splice() -> None:
        results["splice"] = await splice(near, tunnel)

    async def end(name: str, stream: mux.Stream, payload: bytes, slow: bool) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, stream, payload)
            results[name] = await digest_of(stream, slow=slow)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_splice)
        await trio.testing.wait_all_tasks_blocked()
        pushing.extend((near._push is not None, far_near._push is not None))
        nursery.start_soon(end, "far", far, up, True)
        nursery.start_soon(end, "near", near_far, down, False)
    assert pushing == [True, True]
    assert results["far"] == hashlib.sha256(down).hexdigest()
    assert results["near"] == hashlib.sha256(up).hexdigest()
    assert results["splice"] == (len(down), len(up), True)
    if how == "metered":
        assert tunnel.bytes_sent == len(down)
        assert tunnel.bytes_received == len(up)


async def test_a_reset_passes_across_a_splice_of_two_mux_streams(nursery):
    near_far, near = await mux_pair(nursery)
    far, far_near = await mux_pair(nursery)
    outcome: list[bool] = []

    async def run() -> None:
        outcome.append((await splice_tunnel(far_near, near))[2])

    async with trio.open_nursery() as splicing:
        splicing.start_soon(run)
        await near_far.send_all(b"pushed across")
        assert await far.receive_some() == b"pushed across"
        far.reset()
    assert outcome == [False]
    with pytest.raises(mux.StreamReset):
        await near_far.receive_some()
