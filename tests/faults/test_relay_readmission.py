# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A fleet of agents reconnecting at once to a real `bridge-relay serve` whose bridge secret
has the default bcrypt cost: all are readmitted, without one bcrypt run each."""

from __future__ import annotations

import logging
import time
from functools import partial

import trio

from bridge.agent.agent import Agent, AgentConfig
from bridge.transport.tls import client_ssl_context

from ..e2e.e2e_support import parse_assignments, relay_cli

AGENTS = 200
READMISSION_BOUND = 30.0  # seconds; a few with the cache, minutes of bcrypt without


async def wait_until(predicate, what: str, timeout: float) -> float:
    """Seconds it took for `predicate` to hold."""
    start = time.monotonic()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return time.monotonic() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def test_200_agents_reconnecting_at_once_are_all_readmitted(
    launch, fault_proxy, bridge, nursery, caplog
):
    caplog.set_level(logging.ERROR, logger="bridge")  # 200 agents' reconnect warnings
    created = await trio.to_thread.run_sync(
        relay_cli,
        bridge.data_dir,
        "bridges",
        "create",
        "fleet",  # the default cost, 12
    )
    assert created.returncode == 0, created.stderr
    fleet = parse_assignments(created.stdout)
    relay = await trio.to_thread.run_sync(
        partial(launch.relay, args=["--max-sessions-per-bridge", str(AGENTS)])
    )
    proxy = fault_proxy(relay.agent_port)
    context = client_ssl_context(fingerprint=bridge.fingerprint)
    config = AgentConfig(max_backoff=1.0)
    agents = [
        Agent(
            proxy.url,
            fleet["BRIDGE_ID"],
            fleet["BRIDGE_SECRET"],
            ["127.0.0.1:1"],
            context,
            config=config,
        )
        for _ in range(AGENTS)
    ]
    for agent in agents:
        nursery.start_soon(agent.run)
    admitted = await wait_until(
        lambda: all(a.sessions for a in agents), f"{AGENTS} agents to connect", 60
    )

    proxy.cut()  # every agent connection aborted (RST) at once
    proxy.pass_traffic()
    readmitted = await wait_until(
        lambda: all(a.sessions >= 2 for a in agents),
        f"{AGENTS} agents to reconnect",
        READMISSION_BOUND,
    )
    print(f"\n{AGENTS} agents: admitted in {admitted:.2f} s, readmitted in {readmitted:.2f} s")
    # The relay logs a session once it has opened its control stream: a moment after the
    # agent counts it.
    await wait_until(
        lambda: relay.process.stderr().count("\tBridge connected\t") >= 2 * AGENTS,
        "every readmission logged",
        10,
    )
    log = relay.process.stderr()
    assert "Authentication failed" not in log and "Traceback" not in log
    nursery.cancel_scope.cancel()
