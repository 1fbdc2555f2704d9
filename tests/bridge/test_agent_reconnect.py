# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Agent.run over several sessions: reconnects, refusals, drain, systemd notifications."""

import hashlib
import logging
import os

import pytest
import trio

import mux
from bridge.agent.agent import AgentConfig, AuthenticationFailed
from bridge.ops.systemd import Notifier
from bridge.protocol.connect import ConnectStatus
from bridge.protocol.handshake import Welcome, WelcomeStatus

from ..settle import settled
from .bridge_support import FakeRelay, echo, serve

FAST = {"max_backoff": 0.05}


class Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__("unused")
        self.messages: list[str] = []

    def notify(self, *lines: str) -> bool:
        self.messages.append("\n".join(lines))
        return True


async def run_agent(nursery, agent) -> dict:
    """Start ``agent.run`` in the background; the dict gets its result or error."""
    outcome = {"done": trio.Event()}

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            outcome["result"] = await agent.run(task_status=task_status)
        except Exception as exc:
            outcome["error"] = exc
        outcome["done"].set()

    await nursery.start(run)
    return outcome


async def wait_done(outcome: dict) -> None:
    with trio.fail_after(10):
        await outcome["done"].wait()


async def test_reconnects_after_the_session_ends(nursery, relay: FakeRelay, make_agent, caplog):
    port = await serve(nursery, echo)
    agent = make_agent(**FAST)
    await run_agent(nursery, agent)
    first = await relay.next_session()
    await first.aclose()
    second = await relay.next_session()
    tunnel = await relay.open(second, "127.0.0.1", port)
    assert tunnel.reply.status == ConnectStatus.OK
    assert agent.sessions == 2
    reconnecting = [r for r in caplog.records if r.getMessage().startswith("Reconnecting in ")]
    assert len(reconnecting) == 1 and reconnecting[0].levelno == logging.WARNING
    assert reconnecting[0].fields["reason"] == "the relay closed the session"


async def test_retries_an_unavailable_relay_until_it_accepts(nursery, relay, make_agent, caplog):
    answers = [Welcome(WelcomeStatus.BUSY, "try later")] * 3 + [Welcome(WelcomeStatus.OK)]
    relay.welcome = lambda hello: answers.pop(0)
    notifier = Recorder()
    agent = make_agent(**FAST)
    agent.notifier = notifier
    await nursery.start(agent.run)  # returns once the first session is authenticated
    assert relay.connections == 4 and agent.sessions == 1
    warnings = [r for r in caplog.records if r.getMessage().startswith("Reconnecting in ")]
    assert [("BUSY" in r.fields["reason"]) for r in warnings] == [True] * 3
    statuses = [m for m in notifier.messages if m.startswith("STATUS=Reconnecting in 0.0")]
    assert len(statuses) == 3 and "cannot take the bridge now (BUSY)" in statuses[0]
    assert notifier.messages[-1] == f"READY=1\nSTATUS=Connected to 127.0.0.1:{relay.port}"


async def test_rejected_credentials_are_not_retried(nursery, relay, make_agent):
    with pytest.raises(AuthenticationFailed):
        await nursery.start(make_agent(secret="wrong-secret", **FAST).run)
    assert relay.connections == 1


async def test_credentials_rejected_after_a_session_say_why(nursery, relay, make_agent):
    outcome = await run_agent(nursery, make_agent(**FAST))
    relay.welcome = lambda hello: Welcome(WelcomeStatus.AUTH_FAILED, "invalid bridge credentials")
    await (await relay.next_session()).aclose()
    await wait_done(outcome)
    error = outcome["error"]
    assert isinstance(error, AuthenticationFailed)
    assert str(error) == (
        "Relay rejected the bridge credentials: invalid bridge credentials (it was accepted "
        "before: was the bridge deleted or its secret rotated?)"
    )


async def test_drain_lets_open_streams_finish(nursery, relay, make_agent, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    port = await serve(nursery, echo)
    notifier = Recorder()
    agent = make_agent(**FAST)
    agent.notifier = notifier
    outcome = await run_agent(nursery, agent)
    session = await relay.next_session()
    tunnel = await relay.open(session, "127.0.0.1", port)
    await tunnel.stream.send_all(b"before")
    agent.drain()
    assert "STOPPING=1\nSTATUS=Draining 1 open connections" in notifier.messages
    with trio.fail_after(5):
        await settled(lambda: session._conn.remote_go_away)  # GoAway reached the relay
    with pytest.raises(mux.RemoteGoAway):
        await session.open_stream()
    payload = os.urandom(1024 * 1024)
    await tunnel.stream.send_all(payload)
    await tunnel.stream.send_eof()
    echoed = bytearray(tunnel.leftover)
    while data := await tunnel.stream.receive_some():
        echoed += data
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(b"before" + payload).digest()
    await wait_done(outcome)
    assert outcome["result"] == 0
    drained = [r for r in caplog.records if r.getMessage() in ("Draining", "Drained")]
    assert [(r.getMessage(), r.fields) for r in drained] == [
        ("Draining", {"open_connections": 1, "timeout": 30.0}),
        ("Drained", {"finished": 1, "cut": 0}),
    ]


async def test_drain_timeout_cuts_what_is_left(nursery, relay, make_agent):
    port = await serve(nursery, echo)
    agent = make_agent(drain_timeout=0.3, **FAST)
    outcome = await run_agent(nursery, agent)
    session = await relay.next_session()
    tunnel = await relay.open(session, "127.0.0.1", port)
    agent.drain()
    await wait_done(outcome)
    assert outcome["result"] == 1
    with pytest.raises(trio.BrokenResourceError):
        await tunnel.stream.send_all(b"x")
        await tunnel.stream.receive_some()


async def test_drain_while_waiting_to_reconnect_returns_at_once(nursery, relay, make_agent):
    relay.welcome = lambda hello: Welcome(WelcomeStatus.BUSY)
    agent = make_agent(max_backoff=60)
    outcome = {}

    async def run():
        outcome["result"] = await agent.run()

    with trio.fail_after(5):
        async with trio.open_nursery() as running:
            running.start_soon(run)
            await settled(lambda: relay.connections >= 2)
            agent.drain()
    assert outcome["result"] == 0 and agent.sessions == 0


def test_keepalive_settings_reach_the_session():
    config = AgentConfig(
        keepalive_interval=1.5, keepalive_timeout=0.5, mux_config=mux.Config(accept_backlog=7)
    )
    session = config.session_config()
    assert (session.keepalive_interval, session.ping_timeout, session.accept_backlog) == (
        1.5,
        0.5,
        7,
    )
    assert session.enable_keepalive


@pytest.mark.parametrize(
    "field", ["keepalive_interval", "keepalive_timeout", "max_backoff", "drain_timeout"]
)
def test_durations_must_be_positive(field):
    with pytest.raises(ValueError):
        AgentConfig(**{field: 0})
