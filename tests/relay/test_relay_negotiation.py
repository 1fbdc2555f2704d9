# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Capability negotiation against a real relay: an agent of the previous release (its Hello
as bytes) is served in version 1; a current agent learns why the relay ends its session."""

import json

import pytest
import trio

import mux
import relay
from bridge.protocol.connect import (
    ConnectReply,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)
from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello
from bridge.transport.prefixed_stream import PrefixedStream
from tests.relay.relay_support import RunningAgent, captured_logs

from ..settle import settled

TIME_LIMIT = 20


def hello_0_1(bridge_id: str, secret: str) -> bytes:
    """The Hello exactly as release 0.1.0 put it on the wire (no versions, no capabilities)."""
    info = json.dumps({"agent": "trio-bridge/0.1.0", "hostname": "db-1"}, separators=(",", ":"))
    return b"".join(
        [
            b"TBRG\x01",
            bytes([len(bridge_id)]) + bridge_id.encode(),
            bytes([len(secret)]) + secret.encode(),
            len(info).to_bytes(2, "big") + info.encode(),
        ]
    )


async def test_an_agent_of_the_previous_release_is_served_in_version_1(harness, echo_port):
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
        tls = trio.SSLStream(tcp, harness.cert_files.client_context())
        await tls.send_all(hello_0_1(bridge_id, secret))
        expected = b"TBRG\x01\x00\x00\x18connected as bridge prod"  # what 0.1.0 read
        received = b""
        while len(received) < len(expected):
            received += await tls.receive_some()
        assert received[: len(expected)] == expected
        leftover = received[len(expected) :]
        async with mux.open_session(PrefixedStream(tls, leftover), client=True) as session:

            async def open_tunnel():
                stream = await harness.relay.connect("prod", "127.0.0.1", echo_port)
                await trio.aclose_forcefully(stream)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_tunnel)
                # The first stream is a tunnel's connect request: no control stream for 0.1.
                stream = await session.accept_stream()
                parser = ConnectRequestParser()
                while (request := parser.feed(await stream.receive_some())) is None:
                    pass
                assert (request.host, request.port) == ("127.0.0.1", echo_port)
                reply = ConnectReply(ConnectStatus.OK, f"127.0.0.1:{echo_port}")
                await stream.send_all(encode_connect_reply(reply))
                nursery.cancel_scope.cancel()


async def test_the_agent_logs_why_the_relay_ends_its_session(harness, echo_port):
    bridge_id, secret = harness.create_bridge("prod")
    with captured_logs("bridge.agent") as records, trio.fail_after(TIME_LIMIT):
        agent = await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        harness.store.rotate("prod", cost=4)
        await agent.done.wait()
    assert "(the relay said: bridge secret rotated)" in str(agent.error)
    ending = [r for r in records if r.getMessage() == "The relay is ending the session"]
    assert [r.fields["reason"] for r in ending] == ["bridge secret rotated"]
    disconnected = [r for r in records if r.getMessage() == "Disconnected from the relay"]
    assert disconnected[0].fields["reason"] == "the relay said: bridge secret rotated"


async def test_a_draining_relay_tells_an_older_agent_it_ends_the_session(harness, echo_port):
    bridge_id, secret = harness.create_bridge("prod")
    agent = harness.agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
    # An agent of a release before the "move" capability.
    agent._hello = Hello(bridge_id, secret, {"versions": [1, 2], "capabilities": ["control"]})
    running = RunningAgent(agent)
    with captured_logs("bridge.agent") as records, trio.fail_after(TIME_LIMIT):
        await harness.nursery.start(running.run)
        await harness.relay.drain()
        await settled(
            lambda: any(r.getMessage() == "The relay is ending the session" for r in records)
        )
    ending = [r for r in records if r.getMessage() == "The relay is ending the session"]
    assert ending[0].fields["reason"] == "relay shutting down"
    assert not any("moving" in r.getMessage() for r in records)
    # The control stream is not a tunnel: the drain did not wait for it.
    assert harness.relay.registry.open_streams_total() == 0


async def test_a_draining_relay_tells_the_agent_to_move(harness, echo_port):
    bridge_id, secret = harness.create_bridge("prod")
    with captured_logs("bridge.agent") as records, trio.fail_after(TIME_LIMIT):
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        # No other node to move to: the agent lets the session go, and the drain ends.
        await harness.relay.drain()
        await harness.wait_disconnected("prod")
    messages = [r.getMessage() for r in records]
    moving = messages.index("The relay node is draining: moving to another node")
    assert records[moving].fields["reason"] == "relay shutting down"
    assert messages.index("Letting the draining relay node go") > moving
    assert "The relay is ending the session" not in messages


async def test_unknown_and_not_connected_bridges_are_told_apart(harness):
    harness.create_bridge("prod")
    with pytest.raises(relay.BridgeNotConnected, match=r"^Bridge not connected: prod$") as known:
        await harness.relay.connect("prod", "127.0.0.1", 5432)
    assert known.value.known
    with pytest.raises(relay.BridgeNotConnected, match=r"^Unknown bridge: nope$") as unknown:
        await harness.relay.connect("nope", "127.0.0.1", 5432)
    assert not unknown.value.known


async def test_the_relay_names_its_node_to_agents_that_ask(harness):
    bridge_id, secret = harness.create_bridge("prod")

    async def welcome(capabilities: list[str]):
        tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
        async with trio.SSLStream(tcp, harness.cert_files.client_context()) as tls:
            info = {"versions": [1, 2], "capabilities": capabilities}
            await tls.send_all(encode_hello(Hello(bridge_id, secret, info)))
            parser = WelcomeParser()
            while (answer := parser.feed(await tls.receive_some())) is None:
                pass
        return answer

    with trio.fail_after(TIME_LIMIT):
        named = await welcome(["control", "node"])
        unnamed = await welcome(["control"])
    assert named.status == WelcomeStatus.OK and named.node() == harness.relay.node
    assert unnamed.status == WelcomeStatus.OK and "node" not in unnamed.info
