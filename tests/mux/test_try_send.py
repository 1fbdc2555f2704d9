# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`mux.Stream.try_send`: a send that never waits. It takes what the send window and the
write buffer allow, the session writes it from the calling task where the transport can
write without waiting, and it raises what `send_all` raises."""

from __future__ import annotations

import array
import hashlib
import random

import pytest
import trio

import mux

from .mux_support import INITIAL_WINDOW, KIB, receive_all, settle, stream_pair


@pytest.mark.parametrize("transport", ["memory", "socket"])
async def test_what_try_send_takes_arrives_in_order(sessions, nursery, transport):
    client, server = await sessions.open(transport=transport)
    left, right = await stream_pair(client, server)
    rng = random.Random(5)
    payload = rng.randbytes(3 * INITIAL_WINDOW)

    async def send() -> None:
        view = memoryview(payload)
        while view:
            taken = left.try_send(view[: rng.randrange(1, 100 * KIB)])
            if taken:
                view = view[taken:]
            else:
                await left.wait_send_all_might_not_block()
        await left.send_eof()

    nursery.start_soon(send)
    received = await receive_all(right)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


async def test_try_send_takes_at_most_the_send_window(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    await settle()
    assert left.try_send(b"x" * (INITIAL_WINDOW + 5000)) == INITIAL_WINDOW
    assert left.try_send(b"more") == 0  # no window left: nothing taken, nothing raised
    assert left.try_send(b"") == 0
    assert len(await receive_all_of(right, INITIAL_WINDOW)) == INITIAL_WINDOW
    await settle()  # the window update comes back
    assert left.try_send(b"more") == 4


async def receive_all_of(stream: mux.Stream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        received += await stream.receive_some()
    return bytes(received)


async def test_try_send_writes_through_from_the_calling_task(sessions):
    """Over a socket, what try_send queued is written before it returns; over a transport
    with no non-blocking write, the writer task takes it."""
    for transport, left_over in (("socket", False), ("memory", True)):
        client, server = await sessions.open(transport=transport)
        left, right = await stream_pair(client, server)
        await settle()
        assert left.try_send(b"now") == 3
        assert bool(client._conn.pending_output()) is left_over
        assert await right.receive_some() == b"now"


async def test_try_send_while_a_task_sends_is_busy(sessions, nursery):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    nursery.start_soon(left.send_all, b"x" * (INITIAL_WINDOW + 1))  # waits for window
    await settle()
    with pytest.raises(trio.BusyResourceError):
        left.try_send(b"y")
    await receive_all_of(right, INITIAL_WINDOW + 1)


async def test_try_send_raises_what_send_all_raises(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    await left.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        left.try_send(b"after eof")
    other, far = await stream_pair(client, server)
    far.reset()
    await settle()
    with pytest.raises(mux.StreamReset):
        other.try_send(b"after the reset")
    last, _ = await stream_pair(client, server)
    await last.aclose()
    with pytest.raises(trio.ClosedResourceError):
        last.try_send(b"after close")
    live, _ = await stream_pair(client, server)
    await client.aclose()
    with pytest.raises(mux.SessionClosed):
        live.try_send(b"after the session")


async def test_a_transport_that_fails_a_write_through_ends_the_session(nursery):
    near, far = trio.socket.socketpair()

    async def run(*, task_status: trio.TaskStatus[mux.Session]) -> None:
        async with mux.open_session(trio.SocketStream(near), client=True) as session:
            task_status.started(session)
            await trio.sleep_forever()

    session = await nursery.start(run)
    stream = await session.open_stream()
    await settle()
    assert stream.try_send(b"first") == 5  # SYN and data, written through
    far.close()
    assert stream.try_send(b"second") == 6  # queued: the write meets the closed peer
    assert session.closed
    assert session.close_reason is not None
    assert isinstance(session.close_reason.__cause__, OSError)
    with pytest.raises(mux.SessionClosed):
        stream.try_send(b"third")


async def test_try_send_takes_any_buffer_as_bytes(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    words = array.array("H", [1, 2, 3])
    assert left.try_send(words) == 6
    assert await right.receive_some() == words.tobytes()


async def test_a_fin_and_a_window_update_leave_nothing_queued(sessions):
    """Over a socket, send_eof's FIN and the window update a read owes are written by the
    calling task (the writer task only takes what the socket did not)."""
    client, server = await sessions.open(transport="socket")
    left, right = await stream_pair(client, server)
    await settle()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, b"x" * INITIAL_WINDOW)
        assert len(await receive_all_of(right, INITIAL_WINDOW)) == INITIAL_WINDOW
    assert not server._conn.pending_output()  # the window update went out
    await left.send_eof()
    assert not client._conn.pending_output()
    assert await right.receive_some() == b""
