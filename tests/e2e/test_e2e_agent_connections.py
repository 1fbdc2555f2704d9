# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-agent --connections 2` against real relay nodes sharing one PostgreSQL store: a
session on each node, tunnels through the surviving one while a killed node is away, the lost
session back once the node is; two URLs of one node count once."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from .e2e_support import Launcher, Postgres, Relay, free_port
from .process_fixtures import create_bridge

pytestmark = pytest.mark.interop


def connected(relay: Relay) -> int:
    return len(re.findall(r"\tBridge connected\t", relay.process.stderr()))


def psql_works(postgres: Postgres, relay: Relay, value: int) -> None:
    __tracebackhide__ = True
    result = postgres.psql(f"select {value}", port=relay.forwards[postgres.target])
    assert (result.returncode, result.stdout) == (0, f"{value}\n".encode()), result.stderr


def relay_sessions(metrics_port: int) -> dict[str, str]:
    """The agent's `trio_bridge_agent_relay_sessions` series that are up: node -> relay."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        node: relay
        for relay, node in re.findall(
            r"^trio_bridge_agent_relay_sessions"
            r'\{bridge="[^"]+",relay="([^"]+)",node="([^"]*)"\} 1$',
            text,
            re.MULTILINE,
        )
    }


def test_a_session_on_each_node_and_a_killed_node_loses_nothing_new(
    postgres: Postgres, postgres_url: str, tmp_path: Path
):
    bridge = create_bridge(tmp_path, "--store", postgres_url)
    launch = Launcher(bridge, tmp_path)
    try:
        first = launch.node("n1", postgres_url, postgres.target)
        second = launch.node("n2", postgres_url, postgres.target)
        metrics = free_port()
        agent = launch.agent(
            first,
            [postgres.target],
            wait=False,
            args=["--metrics", str(metrics)],
            RELAY_URL=f"{first.url},{second.url}",
        )
        for relay in (first, second):
            relay.process.wait_for(r"\tBridge connected\t")
        assert relay_sessions(metrics) == {
            "n1": first.url.removeprefix("tls://"),
            "n2": second.url.removeprefix("tls://"),
        }
        psql_works(postgres, first, 1)
        psql_works(postgres, second, 2)

        port = first.agent_port
        first.process.stop()  # kill -9
        # Tunnels through the other node work at once: its session never went away.
        for value in range(3, 8):
            psql_works(postgres, second, value)
        assert connected(second) == 1
        # The node comes back (same name and port): the lost session is replaced there.
        again = launch.node(
            "n1", postgres_url, postgres.target, args=["--listen", f"127.0.0.1:{port}"]
        )
        again.process.wait_for(r"\tBridge connected\t")
        psql_works(postgres, again, 8)
        assert agent.poll() is None
        log = agent.stderr()
        assert "\tReconnecting in " in log and "\tERROR\t" not in log
        assert set(relay_sessions(metrics)) == {"n1", "n2"}
    finally:
        launch.close()


def test_two_urls_of_one_node_count_once(postgres: Postgres, postgres_url: str, tmp_path: Path):
    bridge = create_bridge(tmp_path, "--store", postgres_url)
    launch = Launcher(bridge, tmp_path)
    try:
        node = launch.node("n1", postgres_url, postgres.target, args=["--listen-ws", "127.0.0.1:0"])
        listening = node.process.wait_for(
            r"^agents \(WebSocket\): listening on 127\.0\.0\.1:(\d+), path /bridge$",
            stream="stdout",
        )
        metrics = free_port()
        agent = launch.agent(
            node,
            [postgres.target],
            wait=False,
            args=["--metrics", str(metrics), "--log-level", "DEBUG"],
            RELAY_URL=f"{node.url},wss://127.0.0.1:{listening[1]}/bridge",
        )
        agent.wait_for(r"\tAlready connected to this relay node\t")
        node.process.wait_for(r"\tBridge disconnected\t")
        psql_works(postgres, node, 1)
        assert len(relay_sessions(metrics)) == 1
        assert connected(node) == 2  # the second URL once, let go at once
    finally:
        launch.close()
