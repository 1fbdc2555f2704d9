# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A node of `serve --workers 2 --peer-listen` in a cluster on PostgreSQL, beside a node of
one process: each worker is a node of its own behind the host's one peer port, tunnels
cross the peer hop both ways byte-exact, and a SIGHUP of the workers' node fails no
connection through its forward to a bridge on the other node; a killed worker's
successor joins the cluster and the killed one leaves the node list."""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import trio

from ..faults.traffic import load_around, outcome, start_echo
from .e2e_support import Bridge, Launcher, Relay, log_lines, relay_cli, wait_until
from .process_fixtures import create_bridge

pytestmark = pytest.mark.interop

PAYLOAD = 64 * 1024


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, bridge_template: Bridge):
    bridge = create_bridge(tmp_path, "--store", postgres_url, certificate=bridge_template)
    launcher = Launcher(bridge, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


async def _sync(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def _start(cluster: Launcher, store: str, target: str, one: str) -> tuple[Relay, Relay]:
    """Node `node-a` with 2 workers and node `one` (a single process), both forwarding to
    `target`, once every worker is linked to `one`."""
    workers = await _sync(cluster.node, "node-a", store, target, args=["--workers", "2"])
    single = await _sync(cluster.node, one, store, target)
    await _sync(workers.process.wait_for, r"\tWorkers serving\t")
    await _sync(workers.process.wait_for, r"\tPeer link up\t", count=2)
    await _sync(single.process.wait_for, r"\tPeer link up\t", count=2)
    return workers, single


async def _through(port: int, count: int) -> list[str]:
    """`count` echoes through 127.0.0.1:`port`, the first once one works (within 10 s)."""
    with trio.fail_after(10):
        while await outcome(port) != "ok":
            await trio.sleep(0.1)
    return [await outcome(port, PAYLOAD) for _ in range(count)]


def _nodes(cluster: Launcher, store: str) -> dict[str, dict]:
    listed = relay_cli(cluster.bridge.data_dir, "--store", store, "nodes", "--json")
    assert listed.returncode == 0, listed.stderr
    return {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}


async def test_tunnels_cross_between_a_workers_node_and_a_single_node(
    postgres_url: str, cluster: Launcher, nursery
):
    target = await start_echo(nursery)
    workers, single = await _start(cluster, postgres_url, target, "node-b")

    # Each worker is a node in the store, with the host's one peer address, linked to
    # node-b (and not to its sibling).
    rows = _nodes(cluster, postgres_url)
    names = sorted(name for name in rows if name.startswith("node-a/worker-"))
    assert len(names) == 2, rows
    for name in names:
        assert rows[name]["peer_address"] == f"127.0.0.1:{workers.peer_port}"
        assert rows[name]["links"] == ["node-b"]
    assert rows["node-b"]["links"] == names
    table = relay_cli(cluster.bridge.data_dir, "--store", postgres_url, "nodes").stdout
    assert all(name in table for name in names)

    # An agent on node-b, a forward on node-a: through the peer link of whichever worker
    # accepted the connection.
    agent = await _sync(cluster.agent, single, [target], RELAY_CONNECTIONS="1")
    assert await _through(workers.forwards[target], 20) == ["ok"] * 20
    assert "Bridge connected" not in workers.process.stderr()

    # The agent moves to node-a (one of its workers): node-b's forward reaches it.
    agent.stop(signal.SIGTERM)
    await _sync(cluster.agent, workers, [target], RELAY_CONNECTIONS="1")
    assert await _through(single.forwards[target], 20) == ["ok"] * 20
    log = workers.process.stderr() + single.process.stderr()
    assert "Traceback" not in log and "Peer link refused" not in log


async def test_an_agent_spreads_its_sessions_over_hosts_before_workers(
    postgres_url: str, cluster: Launcher, nursery
):
    target = await start_echo(nursery)
    workers, single = await _start(cluster, postgres_url, target, "node-b")
    # Two ways to node-a (either may reach either worker), one to node-b: the two sessions
    # go to node-a and node-b, whichever addresses the agent tries first.
    urls = [workers.url, f"tls://localhost:{workers.agent_port}", single.url]
    await _sync(cluster.agent, single, [target], RELAY_URL=",".join(urls), RELAY_CONNECTIONS="2")

    def held() -> dict[str, int]:
        return {name: row["bridges"] for name, row in _nodes(cluster, postgres_url).items()}

    def spread() -> bool:
        found = held()
        on_a = sum(n for name, n in found.items() if name.startswith("node-a/worker-"))
        return (on_a, found["node-b"]) == (1, 1)

    await _sync(wait_until, spread, "a session on each host", 15)


async def test_sighup_of_the_workers_node_fails_no_connection_to_the_other_node(
    postgres_url: str, cluster: Launcher, nursery
):
    target = await start_echo(nursery)
    # "node-0" sorts before "node-a/...": node-0 dials the new workers.
    workers, single = await _start(cluster, postgres_url, target, "node-0")
    await _sync(cluster.agent, single, [target], RELAY_CONNECTIONS="1")
    forward = workers.forwards[target]
    assert await _through(forward, 1) == ["ok"]
    before = sorted(n for n in _nodes(cluster, postgres_url) if n.startswith("node-a/"))
    reloaded = partial(
        _sync, workers.process.wait_for, r"\tReloaded: every worker replaced\t", timeout=40
    )
    with trio.fail_after(50):
        sighup = partial(workers.process.popen.send_signal, signal.SIGHUP)
        results = await load_around(forward, sighup, reloaded)
    assert len(results) > 75
    assert results == ["ok"] * len(results), [r for r in results if r != "ok"][:3]

    # The old workers left the cluster, the new ones joined it.
    def replaced() -> bool:
        rows = _nodes(cluster, postgres_url)
        now = sorted(n for n in rows if n.startswith("node-a/"))
        return len(now) == 2 and not set(now) & set(before) and rows["node-0"]["links"] == now

    with trio.fail_after(15):
        while not await _sync(replaced):
            await trio.sleep(0.2)
    log = workers.process.stderr()
    assert "Traceback" not in log and "Worker exited: starting it again" not in log
    assert len(log_lines(log, "Worker serving")) == 4


async def test_a_killed_worker_is_replaced_in_the_cluster(
    postgres_url: str, cluster: Launcher, nursery
):
    target = await start_echo(nursery)
    workers, single = await _start(cluster, postgres_url, target, "node-b")
    await _sync(cluster.agent, single, [target], RELAY_CONNECTIONS="1")
    before = sorted(n for n in _nodes(cluster, postgres_url) if n.startswith("node-a/"))
    killed = log_lines(workers.process.stderr(), "Worker serving")[0]["pid"]
    os.kill(killed, signal.SIGKILL)
    await _sync(workers.process.wait_for, r"\tWorker serving\t", count=3)
    await _sync(workers.process.wait_for, r"\tPeer link up\t", count=3)
    assert await _through(workers.forwards[target], 10) == ["ok"] * 10

    # The successor is a node of its own; the killed one could not remove its record: its
    # siblings do once it is gone (the node timeout, 3 s here).
    def replaced() -> bool:
        now = sorted(n for n in _nodes(cluster, postgres_url) if n.startswith("node-a/"))
        return len(now) == 2 and len(set(now) & set(before)) == 1

    with trio.fail_after(20):
        while not await _sync(replaced):
            await trio.sleep(0.3)
    assert "Traceback" not in workers.process.stderr()


async def test_an_agent_on_two_workers_of_one_host_moves_one_to_a_host_that_comes(
    postgres_url: str, cluster: Launcher, nursery
):
    target = await start_echo(nursery)
    # node-a's agent port is reached by its URL (127.0.0.1) and the name it advertises
    # (localhost): two ways to either worker, and the node list says they are one host.
    workers = await _sync(
        cluster.node,
        "node-a",
        postgres_url,
        target,
        args=["--workers", "2", "--agent-advertise", "localhost:0"],
    )
    await _sync(workers.process.wait_for, r"\tWorkers serving\t")
    agent = await _sync(
        cluster.agent,
        workers,
        [target],
        RELAY_CONNECTIONS="2",
        RECONNECT_MAX_BACKOFF="1",
    )

    def held() -> tuple[int, int]:
        rows = _nodes(cluster, postgres_url)
        on_a = sum(row["bridges"] for name, row in rows.items() if name.startswith("node-a/"))
        return on_a, rows["node-b"]["bridges"] if "node-b" in rows else 0

    # No other host: both sessions go to node-a's two workers.
    await _sync(wait_until, lambda: held() == (2, 0), "both workers of node-a", 15)
    # node-b comes, and node-a's workers list it: one session moves there, made before the
    # one it replaces is let go.
    await _sync(
        cluster.node, "node-b", postgres_url, target, args=["--agent-advertise", "127.0.0.1:0"]
    )
    await _sync(wait_until, lambda: held() == (1, 1), "a session on each host", 20)
    log = agent.stderr()
    assert len(log_lines(log, "Letting the second session to the relay host go")) == 1
    assert await _through(workers.forwards[target], 5) == ["ok"] * 5
    assert "Traceback" not in log
