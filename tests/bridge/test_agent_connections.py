# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""An agent keeping sessions to several relay nodes (`AgentConfig.connections`)."""

import logging

import pytest
import trio
import trio.testing

from bridge.agent.agent import Agent, AgentConfig, AuthenticationFailed
from bridge.protocol.connect import ConnectStatus
from bridge.protocol.control import NODES, ControlMessage, encode_control
from bridge.protocol.handshake import Welcome, WelcomeStatus
from bridge.transport.tls import client_ssl_context

from ..settle import settled
from .bridge_support import BRIDGE_ID, SECRET, FakeRelay, echo, serve
from .connect_proxy import ConnectProxy
from .test_agent_reconnect import Recorder


def named(node: str, host: str | None = None):
    """A relay's answer naming its node (the "node" capability of the handshake), and the
    host-level node it is a worker of, if given."""

    def welcome(hello) -> Welcome:
        if (hello.bridge_id, hello.secret) != (BRIDGE_ID, SECRET):
            return Welcome(WelcomeStatus.AUTH_FAILED, "invalid bridge credentials")
        assert "node" in hello.capabilities()
        info = {"capabilities": ["node"], "node": node}
        if host is not None:
            info["host"] = host
        return Welcome(WelcomeStatus.OK, "", 2, info)

    return welcome


@pytest.fixture
async def relays(nursery, certificates) -> list[FakeRelay]:
    started = [FakeRelay(certificates) for _ in range(3)]
    for relay in started:
        await nursery.start(relay.serve)
    return started


def make(urls, certificates, *, proxy=None, **config) -> Agent:
    """An agent of `urls`; with `proxy`, `localhost` is reached through it (and 127.0.0.1
    directly): two ways to one relay that the agent cannot tell are one by address."""
    context = client_ssl_context(ca_file=certificates.ca_file)
    config = {"max_backoff": 0.05, **config}
    return Agent(
        ",".join(urls),
        BRIDGE_ID,
        SECRET,
        ["127.0.0.1:*"],
        context,
        config=AgentConfig(**config),
        proxy=proxy,
        no_proxy="127.0.0.1",
    )


@pytest.fixture
async def proxy(nursery) -> str:
    started = ConnectProxy()
    await nursery.start(started.serve)
    return started.url


def url(relay: FakeRelay, host: str = "127.0.0.1") -> str:
    return f"tls://{host}:{relay.port}"


def series(agent: Agent) -> dict[tuple[str, str], float]:
    return {
        (labels["relay"], labels["node"]): value.value
        for labels, value in agent.metrics.relay_sessions.series()
    }


async def test_sessions_to_two_nodes_and_ready_once(nursery, relays, certificates):
    first, second, _ = relays
    first.welcome, second.welcome = named("n1"), named("n2")
    agent = make([url(first), url(second)], certificates)
    notifier = Recorder()
    agent.notifier = notifier
    await nursery.start(agent.run)
    sessions = [await first.next_session(), await second.next_session()]
    await settled(lambda: agent.metrics.sessions.value(bridge=BRIDGE_ID) == 2)
    assert [m for m in notifier.messages if m.startswith("READY=1")] == [notifier.messages[0]]
    assert series(agent) == {
        (f"127.0.0.1:{first.port}", "n1"): 1,
        (f"127.0.0.1:{second.port}", "n2"): 1,
    }
    # Both sessions serve.
    port = await serve(nursery, echo)
    for session in sessions:
        tunnel = await FakeRelay.open(session, "127.0.0.1", port)
        assert tunnel.reply.status == ConnectStatus.OK
    assert agent.metrics.reconnects.value() == 0


async def test_one_relay_gets_one_session(nursery, relay, certificates):
    agent = make([url(relay)], certificates, connections=3, max_backoff=5)
    await nursery.start(agent.run)
    await relay.next_session()
    await trio.testing.wait_all_tasks_blocked(0.05)  # the other links found nothing to dial
    assert relay.connections == 1 and agent.sessions == 1


async def test_two_ways_to_one_named_node_get_one_session(nursery, relay, certificates, proxy):
    relay.welcome = named("n1")
    agent = make([url(relay), url(relay, "localhost")], certificates, proxy=proxy, max_backoff=5)
    await nursery.start(agent.run)
    await relay.next_session()
    # The second link dials the other way, hears the same node, and lets it go; it
    # remembers, and does not dial it again.
    await settled(lambda: relay.connections == 2)
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert relay.connections == 2 and agent.sessions == 1
    assert agent.metrics.sessions.value(bridge=BRIDGE_ID) == 1


async def test_relays_that_name_no_node_are_told_apart_by_address(
    nursery, relay, certificates, proxy
):
    agent = make([url(relay), url(relay, "localhost")], certificates, proxy=proxy)
    await nursery.start(agent.run)
    await relay.next_session()
    await relay.next_session()
    await settled(lambda: agent.sessions == 2)
    assert {node for _, node in series(agent)} == {""}


def two_workers_of_edge(relays: list[FakeRelay]) -> list[FakeRelay]:
    """`relays`, the first two answering as workers 0 and 1 of the host-level node "edge"."""
    for index, relay in enumerate(relays[:2]):
        relay.welcome = named(f"edge/worker-{index}.1", "edge")
    return relays


async def test_sessions_go_to_distinct_hosts_before_two_workers_of_one(
    nursery, relays, certificates
):
    first, second, third = two_workers_of_edge(relays)
    third.welcome = named("other")
    # In whatever order the links try the addresses, the second session goes to the other
    # host: a worker of the first one's host is let go while an address may reach another.
    agent = make([url(first), url(second), url(third)], certificates, connections=2)
    await nursery.start(agent.run)
    await settled(lambda: agent.sessions == 2)
    await trio.testing.wait_all_tasks_blocked(0.05)
    nodes = {node for _, node in series(agent)}
    assert len(nodes) == 2 and "other" in nodes, nodes
    assert agent.metrics.sessions.value(bridge=BRIDGE_ID) == 2


async def test_workers_of_one_host_take_the_sessions_when_it_is_the_only_host(
    nursery, relays, certificates
):
    first, second, _ = two_workers_of_edge(relays)
    agent = make([url(first), url(second)], certificates, connections=2)
    await nursery.start(agent.run)
    await settled(lambda: agent.sessions == 2)
    assert {node for _, node in series(agent)} == {"edge/worker-0.1", "edge/worker-1.1"}


async def test_a_lost_session_is_replaced_while_the_other_serves(
    nursery, relays, certificates, caplog
):
    caplog.set_level(logging.INFO, logger="bridge")
    first, second, third = relays
    for relay, node in zip(relays, ("n1", "n2", "n3")):
        relay.welcome = named(node)
    agent = make([url(first), url(second), url(third)], certificates, connections=2)
    await nursery.start(agent.run)
    await settled(lambda: agent.metrics.sessions.value(bridge=BRIDGE_ID) == 2)
    on = [r for r in relays if r.hellos]
    spare = next(r for r in relays if not r.hellos)
    lost, kept = [await r.next_session() for r in on]
    port = await serve(nursery, echo)
    await lost.aclose()
    # The kept session serves meanwhile, and the lost one comes back on the spare node (the
    # node it was on is tried last) without touching the kept one.
    tunnel = await FakeRelay.open(kept, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.OK
    replacement = await spare.next_session()
    tunnel = await FakeRelay.open(replacement, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.OK
    assert not kept.closed
    assert agent.metrics.reconnects.value() == 1
    assert len(on[1].hellos) == 1


async def test_credentials_refused_by_another_node_stop_the_agent(nursery, relays, certificates):
    first, second, _ = relays
    second.welcome = lambda hello: Welcome(WelcomeStatus.AUTH_FAILED, "invalid bridge credentials")
    agent = make([url(first), url(second)], certificates)
    outcome = {}

    async def run():
        try:
            await agent.run()
        except AuthenticationFailed as exc:
            outcome["error"] = exc

    # The first session may be on either; the refusal ends the agent all the same.
    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(run)
    assert "invalid bridge credentials" in str(outcome["error"])


async def test_drain_closes_every_session(nursery, relays, certificates):
    first, second, _ = relays
    agent = make([url(first), url(second)], certificates)
    await nursery.start(agent.run)
    sessions = [await first.next_session(), await second.next_session()]
    agent.drain()
    await settled(lambda: all(s.closed for s in sessions))


def telling(node: str, capabilities=("control", "node", "nodes")):
    """A relay's answer naming its node, agreeing to those of `capabilities` the agent
    offers (with "nodes", it may tell the agent its nodes)."""

    def welcome(hello) -> Welcome:
        agreed = [c for c in capabilities if c in hello.capabilities()]
        return Welcome(WelcomeStatus.OK, "", 2, {"capabilities": agreed, "node": node})

    return welcome


async def tell(session, *lists: object) -> None:
    """Open the control stream (the first stream) and send a `nodes` message per list."""
    control = await session.open_stream()
    for nodes in lists:
        await control.send_all(encode_control(ControlMessage(NODES, {"nodes": nodes})))


def told(*relays: tuple[str, FakeRelay]) -> list[dict[str, str]]:
    return [{"node": node, "address": f"127.0.0.1:{relay.port}"} for node, relay in relays]


async def test_a_hostile_list_of_nodes_is_ignored_and_a_good_one_used(
    nursery, relays, certificates, caplog
):
    caplog.set_level(logging.DEBUG, logger="bridge")
    first, second, _ = relays
    first.welcome, second.welcome = telling("n1"), telling("n2")
    agent = make([url(first)], certificates, max_backoff=5)  # given the first node only
    await nursery.start(agent.run)
    session = await first.next_session()
    garbage = [
        "everything",
        [{"node": "n2", "address": "127.0.0.1:0"}],
        [{"node": "x", "address": "h:1"}] * 33,
    ]
    await tell(session, *garbage, told(("n1", first), ("n2", second)))
    # The good list: the second session goes to the node it names.
    await second.next_session()
    await settled(lambda: agent.sessions == 2)
    ignored = [r for r in caplog.records if r.getMessage() == "Ignoring the relay's list of nodes"]
    assert [r.levelno for r in ignored] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert ignored[0].fields["reason"] == "nodes: not a list"
    assert not session.closed and first.connections == 1


async def test_a_list_of_nodes_without_the_capability_is_ignored(nursery, relays, certificates):
    first, second, _ = relays
    first.welcome = telling("n1", capabilities=("control", "node"))  # an older relay
    agent = make([url(first)], certificates, max_backoff=5)
    await nursery.start(agent.run)
    await tell(await first.next_session(), told(("n1", first), ("n2", second)))
    await trio.testing.wait_all_tasks_blocked(0.05)
    assert second.connections == 0 and agent.sessions == 1


def busy(hello) -> Welcome:
    """A relay that cannot take the agent now (it is retried like one unreachable)."""
    return Welcome(WelcomeStatus.BUSY, "too many logins")


def live_sessions(relay: FakeRelay) -> list:
    """The sessions `relay` handed out so far that are still up."""
    found = []
    while True:
        try:
            session = relay._receive.receive_nowait()
        except trio.WouldBlock:
            return [s for s in found if not s.closed]
        found.append(session)


def logged(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_doubled_host_gives_a_session_up_once_another_host_answers(
    nursery, relays, certificates, caplog
):
    caplog.set_level(logging.INFO, logger="bridge")
    first, second, third = two_workers_of_edge(relays)
    third.welcome = busy  # the other host cannot be reached for now
    agent = make([url(first), url(second), url(third)], certificates, connections=2)
    await nursery.start(agent.run)
    await settled(lambda: agent.metrics.sessions.value(bridge=BRIDGE_ID) == 2)
    edge = live_sessions(first) + live_sessions(second)
    assert len(edge) == 2
    port = await serve(nursery, echo)
    tunnels = [await FakeRelay.open(session, "127.0.0.1", port) for session in edge]
    # Both workers of one host are taken, since no address reached another; the agent looks
    # for one now and then, and does not dial again the addresses it knows reach that host.
    tried = (len(first.hellos), len(second.hellos))
    await settled(lambda: len(third.hellos) >= 5)
    assert (len(first.hellos), len(second.hellos)) == tried
    assert not logged(caplog, "Letting the second session to the relay host go")

    third.welcome = named("other")
    await settled(lambda: logged(caplog, "Letting the second session to the relay host go"))
    (let_go,) = logged(caplog, "Letting the second session to the relay host go")
    assert (let_go.fields["host"], let_go.fields["moved_to"]) == ("edge", "other")
    assert len(live_sessions(third)) == 1
    # Make before break: the session let go (the one up last) finishes its tunnel, and the
    # other serves on.
    for tunnel in tunnels:
        await tunnel.stream.send_all(b"still here")
        assert await tunnel.stream.receive_some() == b"still here"
        await tunnel.stream.aclose()
    await settled(lambda: sum(session.closed for session in edge) == 1)
    await settled(lambda: agent.metrics.sessions.value(bridge=BRIDGE_ID) == 2)
    up = sorted(node for (_, node), count in series(agent).items() if count)
    assert len(up) == 2 and up[0].startswith("edge/") and up[1] == "other", up
    assert logged(caplog, "Left the second session to the relay host")
