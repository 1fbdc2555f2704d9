# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`mux.Stream.receive_view` and `receive_view_nowait`: what arrived, handed on without a copy,
in order and credited."""

from __future__ import annotations

import random

import pytest
import trio

from .mux_support import INITIAL_WINDOW, MIB, settle, stream_pair


async def _view_waiting(stream) -> bytes | bytearray | memoryview:
    piece = await stream.receive_view(100_000)
    assert 0 < len(piece) <= 100_000 or piece == b""
    return piece


async def _view_nowait(stream) -> bytes | bytearray | memoryview:
    while True:
        try:
            return stream.receive_view_nowait(100_000)
        except trio.WouldBlock:
            await settle()


@pytest.mark.parametrize("read", [_view_waiting, _view_nowait], ids=["waiting", "nowait"])
async def test_views_carry_every_byte_in_order_and_are_credited(sessions, nursery, read):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    payload = random.Random(5).randbytes(3 * MIB)  # beyond the window: reads must credit it

    async def send() -> None:
        await left.send_all(payload)
        await left.send_eof()

    nursery.start_soon(send)
    received = bytearray()
    while piece := await read(right):
        received += piece
    assert received == payload


async def test_a_view_is_one_piece_at_most_max_bytes(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    await left.send_all(b"first")
    await settle()
    await left.send_all(b"second")
    await settle()
    assert bytes(await right.receive_view(3)) == b"fir"
    assert bytes(await right.receive_view(INITIAL_WINDOW)) == b"st"  # not joined with "second"
    assert bytes(await right.receive_view(INITIAL_WINDOW)) == b"second"
    with pytest.raises(ValueError):
        await right.receive_view(0)


@pytest.mark.parametrize("read", [_view_waiting, _view_nowait], ids=["waiting", "nowait"])
async def test_views_after_a_reset_and_a_close_raise_as_receive_some(sessions, read):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    left.reset()
    await settle()
    with pytest.raises(trio.BrokenResourceError):
        await read(right)
    await right.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await read(right)


async def test_receive_view_nowait_takes_what_arrived_piece_by_piece_without_waiting(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    with pytest.raises(trio.WouldBlock):
        right.receive_view_nowait(10)
    await left.send_all(b"first")
    await settle()
    await left.send_all(b"second")
    await settle()
    assert bytes(right.receive_view_nowait(3)) == b"fir"
    assert bytes(right.receive_view_nowait(INITIAL_WINDOW)) == b"st"  # one piece, not joined
    assert bytes(right.receive_view_nowait(INITIAL_WINDOW)) == b"second"
    with pytest.raises(trio.WouldBlock):
        right.receive_view_nowait(10)
    await left.send_eof()
    await settle()
    assert right.receive_view_nowait(10) == b""
    with pytest.raises(ValueError):
        right.receive_view_nowait(0)
