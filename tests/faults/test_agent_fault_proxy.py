# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The fault proxy itself, in front of an echo server of this test."""

from __future__ import annotations

from functools import partial

import pytest
import trio


async def echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


@pytest.fixture
async def proxy(nursery, fault_proxy):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return fault_proxy(listeners[0].socket.getsockname()[1])


async def connect(proxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.port)


async def test_pass_carries_data_and_half_close(proxy):
    async with await connect(proxy) as stream:
        await stream.send_all(b"hello")
        await stream.send_eof()
        assert await stream.receive_some() == b"hello"
        assert await stream.receive_some() == b""
    assert proxy.accepted == 1


async def test_delay_holds_each_chunk_back(proxy):
    proxy.delay(0.2)
    async with await connect(proxy) as stream:
        start = trio.current_time()
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        assert trio.current_time() - start >= 0.4  # there and back


async def test_blackhole_holds_traffic_until_it_passes_again(proxy):
    async with await connect(proxy) as stream:
        proxy.blackhole()
        await stream.send_all(b"held")
        with trio.move_on_after(0.3):
            await stream.receive_some()
            pytest.fail("data crossed a blackhole")
        assert proxy.connections() == 1  # still open
        proxy.pass_traffic()
        assert await stream.receive_some() == b"held"


async def test_cut_resets_open_and_new_connections(proxy):
    async with await connect(proxy) as stream:
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        proxy.cut()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
    with pytest.raises((OSError, trio.BrokenResourceError)):  # reset during or after connect
        async with await connect(proxy) as stream:
            await stream.receive_some()
    proxy.pass_traffic()
    async with await connect(proxy) as stream:
        await stream.send_all(b"back")
        assert await stream.receive_some() == b"back"
