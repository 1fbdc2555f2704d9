# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The stream calls that never wait: `mux.Stream.send_eof_nowait` and `close` (and what
`receive_nowait` reads credits the window). Each does what its awaitable twin does, and
raises what it raises."""

from __future__ import annotations

import pytest
import trio

import mux

from .mux_support import INITIAL_WINDOW, receive_all, settle, stream_pair


async def test_what_receive_nowait_reads_credits_the_peers_window(sessions, nursery):
    opened, accepted = await stream_pair(*await sessions.open())
    payload = bytes(range(256)) * (3 * INITIAL_WINDOW // 256)

    async def send() -> None:
        await opened.send_all(payload)  # three windows: waits for the reads' credit
        await opened.send_eof()

    nursery.start_soon(send)
    received = bytearray()
    while True:
        try:
            chunk = accepted.receive_nowait()
        except trio.WouldBlock:
            await settle()
            continue
        if not chunk:
            break
        received += chunk
    assert received == payload


async def test_send_eof_nowait_half_closes_once(sessions):
    opened, accepted = await stream_pair(*await sessions.open())
    await opened.send_all(b"request")
    opened.send_eof_nowait()
    opened.send_eof_nowait()  # idempotent
    assert await receive_all(accepted) == b"request"
    with pytest.raises(trio.ClosedResourceError):
        opened.try_send(b"after eof")
    await accepted.send_all(b"reply after eof")
    accepted.send_eof_nowait()
    assert await receive_all(opened) == b"reply after eof"


async def test_send_eof_nowait_raises_what_send_eof_raises(sessions, nursery):
    client, server = await sessions.open()
    busy, _ = await stream_pair(client, server)
    nursery.start_soon(busy.send_all, bytes(INITIAL_WINDOW + 1))  # waits for window
    await settle()
    with pytest.raises(trio.BusyResourceError):
        busy.send_eof_nowait()
    reset, far = await stream_pair(client, server)
    far.reset()
    await settle()
    with pytest.raises(mux.StreamReset):
        reset.send_eof_nowait()
    closed, _ = await stream_pair(client, server)
    closed.close()
    with pytest.raises(trio.ClosedResourceError):
        closed.send_eof_nowait()


async def test_close_is_aclose_without_waiting(sessions):
    client, server = await sessions.open()
    opened, accepted = await stream_pair(client, server)
    await opened.send_all(b"bye")
    await opened.send_eof()
    assert await receive_all(accepted) == b"bye"
    await accepted.send_all(b"bye too")
    accepted.close()  # all read: a graceful FIN
    accepted.close()  # idempotent
    assert await receive_all(opened) == b"bye too"
    unread, far = await stream_pair(client, server)
    await unread.send_all(b"never read")
    await settle()
    far.close()  # data left unread: RST, as TCP does
    await settle()
    with pytest.raises(mux.StreamReset):
        await unread.receive_some()
