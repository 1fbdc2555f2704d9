# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Relay nodes sharing one store, linked by peer links, in one process: presence and the
routing choices of `Relay.connect`."""

from __future__ import annotations

import gc
import logging
import time
from functools import partial

import pytest
import trio
import trio.lowlevel
import trio.testing

from bridge.agent.agent import Agent, AgentConfig
from relay import BridgeBusy, BridgeNotConnected, MemoryStore, TargetNotAllowed
from relay.certificates import PeerIdentity
from relay.config import PeerConfig
from relay.peer_messages import (
    MAX_PRESENCE_BRIDGES,
    MAX_PRESENCE_PART,
    HeldBridge,
    PresenceReader,
    encode_presence,
)
from relay.peering import Peering, PeerRefused

from ..settle import settled
from .relay_support import RelayHarness, RunningAgent, captured_logs, receive_all

# Peer links come up at the first node list refresh: well within this.
FAST = PeerConfig(refresh_interval=0.1, presence_interval=0.2, redial_min=0.05)


class Cluster:
    def __init__(self, nursery, store, cert_files, tmp_path) -> None:
        self.nursery, self.store, self.cert_files, self.tmp_path = (
            nursery,
            store,
            cert_files,
            tmp_path,
        )
        self.nodes: list[RelayHarness] = []

    async def add(self, name: str, **config) -> RelayHarness:
        harness = RelayHarness(
            self.nursery, self.store, self.cert_files, node=name, peer=FAST, **config
        )
        await harness.start()
        identity = PeerIdentity.ensure(self.tmp_path / name)
        await self.nursery.start(
            partial(harness.relay.serve_peers, "127.0.0.1", 0, identity=identity)
        )
        self.nodes.append(harness)
        return harness

    async def linked(self) -> None:
        """Every node has a link up with every other."""
        names = {h.relay.node for h in self.nodes}

        def done() -> bool:
            return all(
                h.relay.peering is not None and set(h.relay.peering.links) == names - {h.relay.node}
                for h in self.nodes
            )

        await settled(done)


@pytest.fixture
def cluster(nursery, cert_files, tmp_path) -> Cluster:
    return Cluster(nursery, MemoryStore(), cert_files, tmp_path)


async def _round_trip(stream, payload: bytes) -> bytes:
    await stream.send_all(payload)
    await stream.send_eof()
    return await receive_all(stream)


async def test_connect_reaches_a_bridge_held_by_another_node(cluster, echo_port):
    one, two, three = [await cluster.add(name) for name in ("node-1", "node-2", "node-3")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: three.relay.is_connected("db") and two.relay.is_connected(bridge_id))

    payload = bytes(range(256)) * 4096
    async with await three.relay.connect("db", "127.0.0.1", echo_port) as stream:
        assert await _round_trip(stream, payload) == payload
    # The holder ran the open: its session carried the stream.
    assert one.relay.registry.sessions("db")[0].mux.statistics().streams_opened_total >= 1


async def test_remote_errors_are_the_local_ones(cluster, echo_port):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    agent = await one.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])
    await settled(lambda: two.relay.is_connected("db"))

    with pytest.raises(TargetNotAllowed, match=r"Host not in allowed hosts list: 127\.0\.0\.1:1$"):
        await two.relay.connect("db", "127.0.0.1", 1)
    with pytest.raises(BridgeNotConnected):
        await two.relay.connect("nobody", "127.0.0.1", echo_port)

    agent.kill()
    await settled(lambda: not two.relay.is_connected("db"))
    with pytest.raises(BridgeNotConnected):
        await two.relay.connect("db", "127.0.0.1", echo_port)


async def test_the_holder_applies_its_limits_and_audits_the_open(cluster, echo_port):
    one = await cluster.add("node-1", max_streams_per_bridge=1)
    two = await cluster.add("node-2")
    events = []
    one.relay.add_audit_hook(events.append)
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: two.relay.is_connected("db"))

    first = await two.relay.connect("db", "127.0.0.1", echo_port, caller="request-7")
    with pytest.raises(BridgeBusy, match="1 streams open, the limit"):
        await two.relay.connect("db", "127.0.0.1", echo_port)
    await first.aclose()
    await settled(lambda: any(e.event == "tunnel.open" for e in events))
    await settled(lambda: len([e for e in events if e.event == "tunnel.open"]) == 2)
    opened, busy = [e for e in events if e.event == "tunnel.open"]
    assert (opened.outcome, opened.caller.label) == ("ok", "request-7 (via node node-2)")
    assert (busy.outcome, busy.caller.label) == ("busy", "via node node-2")


async def test_local_session_is_preferred(cluster, echo_port):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await two.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: one.relay.peering.holders("db") and two.relay.peering.holders("db"))

    streams = [await two.relay.connect("db", "127.0.0.1", echo_port) for _ in range(3)]
    assert two.relay.registry.open_streams("db") == 3
    assert one.relay.registry.open_streams("db") == 0
    for stream in streams:
        await stream.aclose()


async def test_local_session_at_its_stream_limit_goes_remote(cluster, echo_port):
    one = await cluster.add("node-1")
    two = await cluster.add("node-2", max_streams_per_bridge=1)
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await two.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: two.relay.peering.holders("db"))

    first = await two.relay.connect("db", "127.0.0.1", echo_port)
    second = await two.relay.connect("db", "127.0.0.1", echo_port)
    assert two.relay.registry.open_streams("db") == 1
    assert one.relay.registry.open_streams("db") == 1
    assert await _round_trip(second, b"through node-1") == b"through node-1"
    await first.aclose()
    await second.aclose()


async def test_remote_holder_with_fewest_open_streams_is_chosen(cluster, echo_port):
    one, two, three = [await cluster.add(name) for name in ("node-1", "node-2", "node-3")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await two.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: len(three.relay.peering.holders("db")) == 2)

    # Opens sent count until the holder's presence reports them: one each.
    held = [await three.relay.connect("db", "127.0.0.1", echo_port) for _ in range(2)]
    assert one.relay.registry.open_streams("db") == 1
    assert two.relay.registry.open_streams("db") == 1
    # node-1 gets two more: the next open goes to node-2.
    held += [await one.relay.connect("db", "127.0.0.1", echo_port) for _ in range(2)]
    await settled(lambda: three.relay.peering.holders("db")[0][0].node == "node-2")
    held.append(await three.relay.connect("db", "127.0.0.1", echo_port))
    assert two.relay.registry.open_streams("db") == 2
    for stream in held:
        await stream.aclose()


async def test_presence_is_dropped_when_the_link_closes(cluster, echo_port):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: two.relay.is_connected("db"))

    two.relay.peering.links["node-1"].close("test")
    assert not two.relay.is_connected("db")
    # node-1 (the lower name) dials again.
    await settled(lambda: two.relay.is_connected("db"))
    async with await two.relay.connect("db", "127.0.0.1", echo_port) as stream:
        assert await _round_trip(stream, b"again") == b"again"


async def test_a_node_that_stops_accepting_is_no_longer_a_holder(cluster, echo_port):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: two.relay.is_connected("db"))

    one.relay.stop_accepting()
    await settled(lambda: not two.relay.is_connected("db"))
    with pytest.raises(BridgeNotConnected):
        await two.relay.connect("db", "127.0.0.1", echo_port)


async def test_drain_waits_for_tunnels_opened_through_another_node(cluster, echo_port):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
    await settled(lambda: two.relay.is_connected("db"))
    stream = await two.relay.connect("db", "127.0.0.1", echo_port)
    assert two.relay.open_tunnels() == 1
    drained = trio.Event()

    async def drain():
        await two.relay.drain()
        drained.set()

    cluster.nursery.start_soon(drain)
    await trio.testing.wait_all_tasks_blocked()
    assert not drained.is_set()
    # The tunnel still works while its node drains.
    assert await _round_trip(stream, b"still open") == b"still open"
    await stream.aclose()
    await drained.wait()
    assert two.relay.open_tunnels() == 0


async def test_node_record_carries_peer_address_fingerprint_held_bridges_and_links(cluster):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    bridge_id, secret = one.create_bridge("db")
    await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])

    def record(name):
        return next(n for n in cluster.store.list_nodes() if n.name == name)

    await settled(lambda: record("node-1").held == (bridge_id,) and record("node-2").links)
    first = record("node-1")
    assert first.peer_address == one.relay.peering.advertise
    assert first.peer_fingerprint == one.relay.peering.fingerprint
    assert first.links == ("node-2",)
    assert record("node-2").links == ("node-1",)


async def test_unregistered_certificate_cannot_link(cluster, caplog, tmp_path):
    one = await cluster.add("node-1")
    stranger = RelayHarness(cluster.nursery, MemoryStore(), cluster.cert_files, node="node-0")
    peering = Peering(
        stranger.relay, PeerIdentity.ensure(tmp_path / "stranger"), "127.0.0.1:1", FAST
    )

    def registered():
        return [n for n in cluster.store.list_nodes() if n.name == "node-1" and n.peer_address]

    await settled(registered)
    (record,) = registered()

    with caplog.at_level(logging.WARNING, "relay.peering"):
        with pytest.raises(PeerRefused, match="not the one registered for a live node node-0"):
            await peering._dial(record)
    refused = [r for r in caplog.records if r.getMessage() == "Peer link refused"]
    assert len(refused) == 1
    assert one.relay.peering.links == {}


async def test_agents_are_told_the_live_nodes_and_spread_over_them(cluster):
    one = await cluster.add("node-1", agent_advertise=("127.0.0.1", 0))
    two = await cluster.add("node-2", agent_advertise=("127.0.0.1", 0))
    await cluster.add("node-3")  # advertises no agent address: not told
    await cluster.linked()
    both = [("node-1", one.port), ("node-2", two.port)]

    def told(harness: RelayHarness) -> list[tuple[str, int]]:
        return [(n.node, n.port) for n in harness.relay.advertised_nodes()]

    await settled(lambda: told(one) == both and told(two) == both)
    bridge_id, secret = one.create_bridge("db")
    with captured_logs("bridge.agent") as records:
        # Given node-1 only, two sessions: the second goes to the node node-1 told of.
        agent = await one.start_agent(bridge_id, secret, ["127.0.0.1:*"])
        await one.wait_sessions("db", 1)
        await two.wait_sessions("db", 1)

        def listed() -> list[str]:
            lists = [r for r in records if r.getMessage() == "The relay listed its nodes"]
            return lists[-1].fields["nodes"].split() if lists else []

        assert listed() == [f"{name}=127.0.0.1:{port}" for name, port in both]
        # node-2 drains: node-1 stops telling of it; the agent lets its session there go
        # and forgets the address.
        await two.relay.drain()
        await settled(lambda: listed() == [f"node-1=127.0.0.1:{one.port}"])
        assert told(one) == [("node-1", one.port)] and told(two) == [("node-1", one.port)]
        await two.wait_sessions("db", 0)
    assert agent.agent.sessions == 2 and not agent.done.is_set()


async def test_an_agent_moves_to_a_node_its_url_does_not_name(cluster, echo_port):
    one = await cluster.add("node-1", agent_advertise=("127.0.0.1", 0))
    two = await cluster.add("node-2", agent_advertise=("127.0.0.1", 0))
    await cluster.linked()
    await settled(lambda: len(one.relay.advertised_nodes()) == 2)
    bridge_id, secret = one.create_bridge("db")
    # One session, to the one node its URL names (a load balancer's name, say).
    agent = Agent(
        one.url,
        bridge_id,
        secret,
        ["127.0.0.1:*"],
        cluster.cert_files.client_context(),
        config=AgentConfig(connections=1),
    )
    running = RunningAgent(agent)
    with captured_logs("bridge.agent") as records:
        await cluster.nursery.start(running.run)
        await settled(lambda: any(r.getMessage() == "The relay listed its nodes" for r in records))
        # node-1 drains: the agent opens a session to node-2 (which node-1 told it of) before
        # it lets node-1's go; node-1's drain ends once it has.
        await one.relay.drain()
    await two.wait_sessions("db", 1)
    assert agent.sessions == 2 and not running.done.is_set()
    async with await two.relay.connect("db", "127.0.0.1", echo_port) as stream:
        assert await _round_trip(stream, b"moved") == b"moved"


async def test_nodes_sharing_an_address_are_told_of_once(cluster):
    # As the workers of one host (--workers) share its agent port.
    shared = {"agent_advertise": ("relay.example", 4000)}
    two, one = [await cluster.add(name, **shared) for name in ("node-2", "node-1")]
    three = await cluster.add("node-3", agent_advertise=("127.0.0.1", 0))
    await cluster.linked()
    expected = [("node-1", "relay.example", 4000), ("node-3", "127.0.0.1", three.port)]
    for harness in (one, two, three):
        await settled(
            lambda h=harness: (
                [(n.node, n.host, n.port) for n in h.relay.advertised_nodes()] == expected
            )
        )


async def test_a_large_presence_is_applied_whole_without_holding_up_the_loop(cluster):
    one, two = [await cluster.add(name) for name in ("node-1", "node-2")]
    await cluster.linked()
    many = [HeldBridge(f"{i:032x}", f"bridge-{i}", i % 7) for i in range(MAX_PRESENCE_BRIDGES)]
    # What decoding the whole list costs, in this thread's CPU time (whatever the load):
    # the loop may be held up by a small fraction of it at a time, no more.
    began = time.thread_time()
    PresenceReader().feed(encode_presence(many))
    whole = time.thread_time() - began
    link = two.relay.peering.links["node-1"]
    gaps, sizes = [], set()

    async def watch() -> None:
        last = time.thread_time()
        while len(link.held) < len(many):
            await trio.lowlevel.checkpoint()
            now = time.thread_time()
            gaps.append(now - last)
            last = now
            sizes.add(len(link.held))  # never half a list

    gc.disable()  # a collection's pause is no one message's
    try:
        one.relay.peering._held_here = lambda: many  # type: ignore[method-assign]
        one.relay.peering.presence_changed()
        await watch()
    finally:
        gc.enable()
    assert two.relay.peering.holders("bridge-49999")[0][0] is link
    assert sizes <= {0, len(many)}
    # The two nodes share this loop: node-1 encoded and sent the list, node-2 read and
    # decoded it, a part at a time with many turns of the watcher's in between (decoded in
    # one piece, the loop was held up by a seventh to a ninth of `whole` at a time).
    assert len(gaps) >= 10 * MAX_PRESENCE_BRIDGES // MAX_PRESENCE_PART
    assert max(gaps) < whole / 10, (max(gaps), whole)


async def test_workers_are_told_of_with_their_host(cluster):
    shared = {"agent_advertise": ("relay.example", 4000), "host": "edge"}
    edge = [await cluster.add(f"edge/worker-{i}.1", **shared) for i in range(2)]
    solo = await cluster.add("solo", agent_advertise=("127.0.0.1", 0))
    await cluster.linked()
    # One entry for the host's shared address (its first worker by name), with the host.
    expected = [("edge/worker-0.1", "edge"), ("solo", None)]
    for harness in (*edge, solo):
        await settled(
            lambda h=harness: (
                [(n.node, n.host_node) for n in h.relay.advertised_nodes()] == expected
            )
        )
