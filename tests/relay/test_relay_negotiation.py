# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Capability negotiation against a real relay: an agent of the previous release (its Hello
as bytes) is served in version 1; a current agent learns why the relay ends its session;
the relay's list of nodes goes only to agents that ask, and an agent does without it."""

import json
from functools import partial

import pytest
import trio
import trio.testing

import mux
import relay
import relay.relay as relay_module
from bridge.protocol.connect import (
    ConnectReply,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)
from bridge.protocol.control import AdvertisedNode, ControlMessage, ControlParser, advertised_nodes
from bridge.protocol.handshake import (
    Hello,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
    negotiate,
)
from bridge.transport.prefixed_stream import PrefixedStream
from relay import MemoryStore
from tests.relay.relay_support import RelayHarness, RunningAgent, captured_logs

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
    with (
        captured_logs("bridge.agent") as records,
        captured_logs("relay") as relay_records,
        trio.fail_after(TIME_LIMIT),
    ):
        await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        # No other node to move to: the agent lets the session go, and the drain ends.
        await harness.relay.drain()
        await harness.wait_disconnected("prod")
        await settled(lambda: any(r.getMessage() == "Bridge disconnected" for r in relay_records))
    left = [r for r in relay_records if r.getMessage() == "Bridge disconnected"]
    assert left[0].fields["reason"] == "moved to another node"
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


async def _control_messages(harness, capabilities: list[str]) -> list[ControlMessage]:
    """Log in with `capabilities`, have the relay drain, and return every control message
    the session carried (the control stream ends with the drain)."""
    bridge_id, secret = harness.create_bridge(f"b{len(capabilities)}")
    tcp = await trio.open_tcp_stream("127.0.0.1", harness.port)
    tls = trio.SSLStream(tcp, harness.cert_files.client_context())
    info = {"versions": [1, 2], "capabilities": capabilities}
    await tls.send_all(encode_hello(Hello(bridge_id, secret, info)))
    parser = WelcomeParser()
    while (welcome := parser.feed(await tls.receive_some())) is None:
        pass
    assert welcome.status == WelcomeStatus.OK
    messages = []
    async with mux.open_session(PrefixedStream(tls, parser.leftover), client=True) as session:
        control = await session.accept_stream()
        reader = ControlParser()
        # Registered, and what the relay sends on login sent, before it drains.
        await settled(lambda: harness.relay.is_connected(bridge_id))
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness.relay.drain)
            while data := await control.receive_some():
                messages += reader.feed(data)
            await session.aclose()
    return messages


async def test_the_relay_tells_its_nodes_only_to_agents_that_ask(nursery, cert_files):
    store = MemoryStore()
    advertising = RelayHarness(nursery, store, cert_files, agent_advertise=("127.0.0.1", 0))
    await advertising.start()
    with trio.fail_after(TIME_LIMIT):
        current = await _control_messages(advertising, ["control", "node", "move", "nodes"])
    assert current[0].type == "nodes" and current[-1].type == "move"
    assert advertised_nodes(current[0]) == (
        AdvertisedNode(advertising.relay.node, "127.0.0.1", advertising.port),
    )
    # An agent of the previous release, on a relay of its own (the first one drained).
    other = await RelayHarness(
        nursery, store, cert_files, node="other", agent_advertise=("127.0.0.1", 0)
    ).start()
    with trio.fail_after(TIME_LIMIT):
        previous = await _control_messages(other, ["control", "node", "move"])
    assert [m.type for m in previous] == ["move"]


async def test_an_agent_against_a_relay_of_the_previous_release(
    nursery, cert_files, echo_port, monkeypatch
):
    # The previous release's relay agrees to none of "nodes" (and never sends the list).
    monkeypatch.setattr(
        relay_module, "negotiate", partial(negotiate, capabilities=("control", "node", "move"))
    )
    harness = await RelayHarness(
        nursery, MemoryStore(), cert_files, agent_advertise=("127.0.0.1", 0)
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    with captured_logs("bridge.agent") as records, trio.fail_after(TIME_LIMIT):
        agent = await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
        async with await harness.relay.connect("prod", "127.0.0.1", echo_port) as stream:
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
        await harness.relay.drain()
        await harness.wait_disconnected("prod")
    assert agent.agent.sessions == 1
    assert "The relay listed its nodes" not in [r.getMessage() for r in records]
