# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The bridge_tunnel fixtures carry real connections, refuse what the agent refuses, and
leave nothing running or open behind them."""

from __future__ import annotations

import os
from functools import partial

import pytest
import trio

import relay
from relay.testing import BridgeTunnel, open_bridge_tunnel


async def echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # a tunnel cut short (left open when the tunnel closed) resets its target


async def echo_port(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def round_trip(tunnel: BridgeTunnel, port: int, payload: bytes) -> bytes:
    """Sends payload and EOF through the tunnel concurrently with reading the echo to EOF."""
    stream = await tunnel.connect("127.0.0.1", port)
    received = bytearray()

    async def send() -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        async for data in stream:
            received += data
    return bytes(received)


async def test_echo_through_the_tunnel(bridge_tunnel, nursery):
    port = await echo_port(nursery)
    payload = os.urandom(1 << 20)
    assert await round_trip(bridge_tunnel, port, payload) == payload


async def test_tunnel_attributes(bridge_tunnel):
    record = bridge_tunnel.relay.store.get(bridge_tunnel.bridge_name)
    assert record.id == bridge_tunnel.bridge_id
    assert bridge_tunnel.agents == [bridge_tunnel.agent]
    assert bridge_tunnel.agent.bridge_id == bridge_tunnel.bridge_id
    assert bridge_tunnel.relay.is_connected(bridge_tunnel.bridge_id)
    assert bridge_tunnel.relay_url.startswith("tls://127.0.0.1:")
    assert bridge_tunnel.secret not in repr(bridge_tunnel)


async def test_target_outside_the_allow_list_is_refused_by_the_agent(bridge_tunnel):
    with pytest.raises(relay.TargetNotAllowed) as refused:
        await bridge_tunnel.connect("127.0.0.2", 5432)
    assert refused.value.message == "Host not in allowed hosts list: 127.0.0.2:5432"


async def test_factory_with_a_custom_allow_list(bridge_tunnel_factory, nursery):
    allowed, other = await echo_port(nursery), await echo_port(nursery)
    tunnel = await bridge_tunnel_factory(allow=[f"127.0.0.1:{allowed}"])
    assert await round_trip(tunnel, allowed, b"allowed") == b"allowed"
    with pytest.raises(relay.TargetNotAllowed, match=f"127.0.0.1:{other}"):
        await tunnel.connect("127.0.0.1", other)


async def test_factory_tunnels_are_independent(bridge_tunnel_factory):
    first, second = await bridge_tunnel_factory(), await bridge_tunnel_factory(bridge_name="other")
    assert first.relay is not second.relay
    assert first.relay_url != second.relay_url
    assert second.relay.store.get("other").id == second.bridge_id
    with pytest.raises(relay.BridgeNotConnected):
        await first.relay.connect(second.bridge_id, "127.0.0.1", 5432)


async def test_several_agents_share_one_bridge(bridge_tunnel_factory, nursery):
    port = await echo_port(nursery)
    tunnel = await bridge_tunnel_factory(agents=2)
    assert len({id(agent) for agent in tunnel.agents}) == 2
    sessions = tunnel.relay.registry.sessions(tunnel.bridge_id)
    assert len(sessions) == 2
    # The relay opens each stream on the session with the fewest open streams.
    streams = [await tunnel.connect("127.0.0.1", port) for _ in sessions]
    assert [session.open_streams() for session in sessions] == [1, 1]
    for stream in streams:
        await stream.aclose()
    assert await round_trip(tunnel, port, b"still fine") == b"still fine"


async def test_factory_needs_an_agent(bridge_tunnel_factory):
    with pytest.raises(ValueError, match="at least one agent"):
        await bridge_tunnel_factory(agents=0)


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_open_bridge_tunnel_closes_everything():
    before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        port = await echo_port(nursery)
        async with open_bridge_tunnel(agents=2) as tunnel:
            stream = await tunnel.connect("127.0.0.1", port)
            await stream.send_all(b"left open")
        nursery.cancel_scope.cancel()
    assert len(tunnel.relay.registry) == 0
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_open_bridge_tunnel_raises_the_block_error_itself():
    with pytest.raises(LookupError, match="from the block"):
        async with open_bridge_tunnel():
            raise LookupError("from the block")
