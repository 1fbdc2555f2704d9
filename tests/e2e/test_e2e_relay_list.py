# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""An agent given a list of relay nodes (`RELAY_URL=tls://node1,tls://node2`): real relays
sharing one PostgreSQL store, each with a self-signed certificate of its own pinned by a
list of fingerprints; `kill -9` of the node the agent is on sends it to the other one."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .e2e_support import Launcher, Postgres, Relay, relay_cli
from .process_fixtures import create_bridge

pytestmark = pytest.mark.interop


def start_node(launch: Launcher, name: str, store: str, target: str) -> tuple[Relay, str]:
    """A node (`Launcher.node`) forwarding to `target`, with the self-signed certificate it
    makes in its own data dir; returns it and that certificate's fingerprint."""
    relay = launch.node(name, store, target, own_certificate=True)
    printed = relay_cli(launch.node_dir(name), "fingerprint")
    assert printed.returncode == 0, printed.stderr
    return relay, printed.stdout.strip()


def bridge_connected(relay: Relay) -> int:
    return len(re.findall(r"\tBridge connected\t", relay.process.stderr()))


def test_kill_9_of_its_node_sends_the_agent_to_the_other(
    postgres: Postgres, postgres_url: str, tmp_path: Path
):
    bridge = create_bridge(tmp_path, "--store", postgres_url)
    launch = Launcher(bridge, tmp_path)
    try:
        nodes = [start_node(launch, name, postgres_url, postgres.target) for name in ("n1", "n2")]
        (first, first_pin), (second, second_pin) = nodes
        assert first_pin != second_pin  # each node's own self-signed certificate
        agent = launch.agent(
            first,
            [postgres.target],
            wait=False,
            RELAY_URL=f"{first.url}, {second.url}",
            RELAY_FINGERPRINT=f"{first_pin},{second_pin}",
            RELAY_CONNECTIONS="1",  # one session, that moves
        )
        agent.wait_for(r"\tHandling incoming proxy connections")
        on = next(relay for relay, _ in nodes if bridge_connected(relay))
        other = second if on is first else first
        result = postgres.psql("select 1 + 1", port=on.forwards[postgres.target])
        assert (result.returncode, result.stdout) == (0, b"2\n"), result.stderr

        on.process.stop()  # SIGKILL: no goodbye to the agent, the socket just closes
        killed = time.monotonic()
        agent.wait_for(r"\tHandling incoming proxy connections", count=2)
        reconnected = time.monotonic() - killed
        other.process.wait_for(r"\tBridge connected\t")
        result = postgres.psql("select 40 + 2", port=other.forwards[postgres.target])
        assert (result.returncode, result.stdout) == (0, b"42\n"), result.stderr
        # A lost healthy session is retried within a second (backoff with full jitter, the
        # dead node last in the round): generous slack for a loaded machine.
        assert reconnected < 10, f"reconnected {reconnected:.1f} s after the kill"
        log = agent.stderr()
        assert "\tDisconnected from the relay\t" in log
        assert "\tERROR\t" not in log  # both certificates were accepted by their pins
        assert agent.poll() is None
    finally:
        launch.close()


def test_a_relay_list_with_an_unpinned_node_is_refused_at_start(
    postgres: Postgres, postgres_url: str, tmp_path: Path
):
    """Before a first session, a round in which a node's certificate failed its pin (and no
    other node could be used) exits 78: the trust settings are wrong."""
    bridge = create_bridge(tmp_path, "--store", postgres_url)
    launch = Launcher(bridge, tmp_path)
    try:
        node, pin = start_node(launch, "n1", postgres_url, postgres.target)
        del pin
        agent = launch.agent(
            node,
            [postgres.target],
            wait=False,
            RELAY_URL=f"{node.url},tls://127.0.0.1:1",
            RELAY_FINGERPRINT=f"sha256:{'00' * 32},sha256:{'11' * 32}",
        )
        assert agent.wait() == 78
        last = agent.stderr().splitlines()[-1]
        assert "does not match any of the 2 pinned fingerprints" in last, last
        assert "exit status 78" in last
    finally:
        launch.close()
