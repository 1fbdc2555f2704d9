# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import pytest
import trio
import trio.testing

from bridge.transport.prefixed_stream import PrefixedStream

PREFIX = b"bytes that arrived with the handshake"


async def prefixed_pair(prefix=PREFIX):
    """A connected pair whose first end is a PrefixedStream; the prefix is read off first,
    as the layer above would, so the checks see exactly what the peer sends."""
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, prefix)
    received = b""
    while len(received) < len(prefix):
        received += await stream.receive_some(7)
    assert received == prefix
    return stream, right


async def make_pair():
    return await prefixed_pair()


async def make_flipped_pair():
    stream, peer = await prefixed_pair()
    return peer, stream


async def make_socket_pair():
    left, right = trio.socket.socketpair()
    stream = PrefixedStream(trio.SocketStream(left), PREFIX)
    assert await stream.receive_some(len(PREFIX)) == PREFIX
    return stream, trio.SocketStream(right)


async def fill(stream):
    """Send until the socket buffers are full."""

    async def sender():
        while True:
            await stream.send_all(b"x" * 65536)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def make_clogged_socket_pair():
    stream, peer = await make_socket_pair()
    await fill(stream)
    await fill(peer)
    return stream, peer


async def test_check_half_closeable_stream():
    await trio.testing.check_half_closeable_stream(make_pair, None)
    await trio.testing.check_half_closeable_stream(make_flipped_pair, None)


async def test_check_half_closeable_stream_on_sockets():
    await trio.testing.check_half_closeable_stream(make_socket_pair, make_clogged_socket_pair)


async def test_prefix_first_then_the_stream_respecting_max_bytes():
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"abcdef")
    await right.send_all(b"ghi")
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some() == b"ef"
    assert await stream.receive_some() == b"ghi"


async def test_prefix_then_eof():
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"ab")
    await right.send_eof()
    assert await stream.receive_some() == b"ab"
    assert await stream.receive_some() == b""


async def test_arguments_checked_while_prefix_pending():
    left, _ = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"ab")
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error):
            await stream.receive_some(bad)
    assert await stream.receive_some(1) == b"a"


async def test_closed_with_prefix_pending():
    left, _ = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"ab")
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()


async def test_concurrent_receive_with_prefix_pending_is_busy():
    left, _ = trio.testing.memory_stream_pair()
    stream = PrefixedStream(left, b"ab")
    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some, 1)
            nursery.start_soon(stream.receive_some, 1)


async def test_send_eof_needs_a_half_closeable_transport():
    send, receive = trio.testing.memory_stream_one_way_pair()
    stapled = trio.StapledStream(send, receive)
    await PrefixedStream(stapled, b"").send_eof()  # StapledStream can
    with pytest.raises(TypeError, match="cannot half-close"):
        await PrefixedStream(receive, b"").send_eof()


async def test_receive_view_gives_the_prefix_first_and_only_where_the_stream_has_one():
    class Viewing:
        async def receive_view(self, max_bytes):
            return memoryview(b"from the stream")[:max_bytes]

    stream = PrefixedStream(Viewing(), b"ab")
    assert await stream.receive_view(1) == b"a"
    assert await stream.receive_view(10) == b"b"
    assert bytes(await stream.receive_view(4)) == b"from"
    left, _ = trio.testing.memory_stream_pair()
    assert not hasattr(PrefixedStream(left, b"ab"), "receive_view")


async def test_receive_view_nowait_leaves_the_prefix_to_receive_view():
    class Viewing:
        async def receive_view(self, max_bytes):
            return memoryview(b"from the stream")[:max_bytes]

        def receive_view_nowait(self, max_bytes):
            return memoryview(b"buffered")[:max_bytes]

        async def aclose(self):
            pass

    stream = PrefixedStream(Viewing(), b"ab")
    with pytest.raises(trio.WouldBlock):  # the prefix is receive_view's to return
        stream.receive_view_nowait(10)
    assert await stream.receive_view(10) == b"ab"
    assert bytes(stream.receive_view_nowait(3)) == b"buf"
    closed = PrefixedStream(Viewing(), b"ab")
    await closed.aclose()
    with pytest.raises(trio.ClosedResourceError):
        closed.receive_view_nowait(3)
    left, _ = trio.testing.memory_stream_pair()
    assert not hasattr(PrefixedStream(left, b"ab"), "receive_view_nowait")


def test_the_nowait_half_close_is_passed_on():
    inner = trio.testing.MemorySendStream()
    ended = []
    inner.send_eof_nowait = lambda: ended.append(True)  # type: ignore[attr-defined]
    PrefixedStream(inner, b"x").send_eof_nowait()  # type: ignore[arg-type,attr-defined]
    assert ended == [True]
    assert not hasattr(PrefixedStream(trio.testing.MemorySendStream()), "send_eof_nowait")  # type: ignore[arg-type]
