# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Push delivery (`mux.Stream.set_push`): data for a waiting reader goes to its sink from the
session's reader task; what the sink does not take is buffered and read as usual."""

from __future__ import annotations

import hashlib
import random

import trio

from .mux_support import INITIAL_WINDOW, MIB, receive_all, settle, stream_pair


class Sink:
    """A push target taking at most ``limit`` bytes per call (None: all)."""

    def __init__(self, limit: int | None = None, log: list[bytes] | None = None) -> None:
        self.limit = limit
        self.log = log
        self.taken = bytearray()
        self.calls = 0
        self.error: OSError | None = None

    def __call__(self, data: memoryview) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        take = len(data) if self.limit is None else min(self.limit, len(data))
        self.taken += data[:take]
        if self.log is not None:
            self.log.append(bytes(data[:take]))
        return take


async def test_data_for_a_waiting_reader_is_pushed_and_credited(sessions, nursery):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    sink = Sink()
    assert right.set_push(sink)
    rng = random.Random(3)
    payload = rng.randbytes(3 * MIB)  # beyond the window: pushed bytes must be credited back

    async def send() -> None:
        await left.send_all(payload)
        await left.send_eof()

    nursery.start_soon(send)
    assert await right.receive_some() == b""  # everything was pushed, then the FIN came
    assert hashlib.sha256(sink.taken).digest() == hashlib.sha256(payload).digest()


async def test_what_the_push_target_does_not_take_is_read_in_order(sessions, nursery):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    log: list[bytes] = []
    sink = Sink(limit=1000, log=log)
    right.set_push(sink)
    payload = random.Random(4).randbytes(2 * INITIAL_WINDOW)

    async def send() -> None:
        await left.send_all(payload)
        await left.send_eof()

    nursery.start_soon(send)
    while chunk := await right.receive_some(7000):
        log.append(chunk)
    # Pushes and reads interleave in the order of the data, never overlapping or skipping.
    assert sink.taken
    assert b"".join(log) == payload


async def test_nothing_is_pushed_while_no_task_waits(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    sink = Sink()
    right.set_push(sink)
    await left.send_all(b"buffered")
    await settle()
    assert sink.calls == 0
    assert await right.receive_some() == b"buffered"


async def test_a_push_target_that_fails_stops_pushing(sessions, nursery):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    sink = Sink()
    sink.error = BrokenPipeError("gone")
    right.set_push(sink)

    async def send() -> None:
        await left.send_all(b"one")
        await settle()
        await left.send_all(b"two")
        await left.send_eof()

    nursery.start_soon(send)
    assert await receive_all(right) == b"onetwo"
    assert sink.calls == 1  # not offered anything after its error


async def test_push_stops_when_unset(sessions):
    client, server = await sessions.open()
    left, right = await stream_pair(client, server)
    sink = Sink()
    right.set_push(sink)
    async with trio.open_nursery() as waiting:
        waiting.start_soon(right.receive_some)
        await settle()
        await left.send_all(b"pushed")
        await settle()
        waiting.cancel_scope.cancel()
    assert sink.taken == b"pushed"
    right.set_push(None)
    await left.send_all(b"read")
    assert await right.receive_some() == b"read"
    assert sink.taken == b"pushed"
