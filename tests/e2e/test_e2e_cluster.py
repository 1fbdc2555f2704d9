# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Several `bridge-relay serve` nodes sharing one PostgreSQL store: real relays, agents, psql
and PostgreSQL servers.

The store and the database reached through the tunnels are different servers where a test
stops the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from .e2e_support import (
    Launcher,
    Postgres,
    Relay,
    SteadyQueries,
    list_nodes,
    long_query,
    relay_cli,
    revoke,
    wait_until,
    wait_until_running,
)
from .postgres_server import PostgresServer
from .process_fixtures import create_bridge

pytestmark = pytest.mark.interop

# The PostgreSQL outage the issue asks the nodes to ride through.
OUTAGE = 30.0


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Launcher]:
    """A launcher whose bridge was created in a PostgreSQL store of this test's own
    (`postgres_url`), for `Launcher.node`."""
    launcher = Launcher(create_bridge(tmp_path, "--store", postgres_url), tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def _tunnel(launch: Launcher, postgres: Postgres, node: Relay) -> None:
    """A query through the node's forward gives the answer it gives directly."""
    __tracebackhide__ = True
    result = postgres.psql(f"select '{node.node}'", port=node.forwards[postgres.target])
    assert (result.returncode, result.stdout) == (0, f"{node.node}\n".encode()), result.stderr


def test_delete_from_elsewhere_cuts_the_sessions_on_every_node(
    cluster: Launcher, postgres: Postgres, postgres_url: str, tmp_path: Path
):
    # Three nodes; agents of the bridge on the first and the third, a long query through each.
    nodes = [cluster.node(f"node{i}", postgres_url, postgres.target) for i in (1, 2, 3)]
    agents = [cluster.agent(node, [postgres.target]) for node in (nodes[0], nodes[2])]
    query = long_query()
    for node in (nodes[0], nodes[2]):
        cluster.start("psql", postgres.psql_argv(query, node.forwards[postgres.target]))
    wait_until_running(postgres, query, count=2)
    revoke(
        lambda: relay_cli(
            tmp_path / "admin-machine", "--store", postgres_url, "bridges", "delete", "e2e", "--yes"
        ),
        "bridge deleted",
        [nodes[0].process, nodes[2].process],
        agents,
    )
    psqls = [p for p in cluster.processes if p.name == "psql"]
    assert all(psql.wait(timeout=10) != 0 for psql in psqls)
    assert all(node.process.poll() is None for node in nodes)


def test_rotate_from_elsewhere_cuts_the_sessions_on_every_node(
    cluster: Launcher, postgres: Postgres, postgres_url: str, tmp_path: Path
):
    nodes = [cluster.node(f"node{i}", postgres_url, postgres.target) for i in (1, 2)]
    agents = [cluster.agent(node, [postgres.target]) for node in nodes]
    query = long_query()
    cluster.start("psql", postgres.psql_argv(query, nodes[1].forwards[postgres.target]))
    wait_until_running(postgres, query)
    revoke(
        lambda: relay_cli(
            tmp_path / "admin-machine", "--store", postgres_url, "bridges", "rotate", "e2e"
        ),
        "bridge secret rotated",
        [node.process for node in nodes],
        agents,
    )


def test_store_outage_under_two_nodes_loses_no_tunnel_and_converges(
    postgres: Postgres, tmp_path: Path
):
    (tmp_path / "store-logs").mkdir()
    store = PostgresServer(tmp_path / "store-logs")
    store.start()
    launch = None
    try:
        url = store.create_database()
        launch = Launcher(create_bridge(tmp_path, "--store", url), tmp_path)
        nodes = [launch.node(f"node{i}", url, postgres.target) for i in (1, 2)]
        for node in nodes:
            launch.agent(node, [postgres.target])
        # One psql session through each node, answering queries all along.
        steady = [
            SteadyQueries(launch, postgres, node.forwards[postgres.target], f"steady-{node.node}")
            for node in nodes
        ]
        for session in steady:
            session.query()

        store.stop()
        stopped = time.time()
        for node in nodes:
            node.process.wait_for(r"\tBridge store unreachable", timeout=10)
        # New tunnels, and a new login of the admitted bridge on each node, from memory.
        for node in nodes:
            _tunnel(launch, postgres, node)
            launch.agent(node, [postgres.target])
        while time.time() < stopped + OUTAGE:
            for session in steady:
                session.query()
            time.sleep(0.5)
        store.start()
        for node in nodes:
            node.process.wait_for(r"\tBridge store reachable again", timeout=15)

        # The cluster converges: both nodes heartbeat again, with what they hold; the last
        # seen times of the logins during the outage are written.
        def converged() -> bool:
            listed = list_nodes(url, tmp_path / "admin-machine")
            return set(listed) == {"node1", "node2"} and all(
                row["alive"] and row["bridges"] == 1 and row["streams"] == 1
                for row in listed.values()
            )

        wait_until(converged, "both nodes to heartbeat what they hold", 10)
        with psycopg.connect(url) as conn:
            (seen,) = conn.execute("select last_seen_at from bridges").fetchone()
        assert seen is not None and seen > stopped
        for node in nodes:
            _tunnel(launch, postgres, node)
        for session in steady:
            session.query()
            session.finish()
        for node in nodes:
            log = node.process.stderr()
            assert node.process.poll() is None
            assert log.count("Bridge store unreachable") == 1, log
            assert log.count("Bridge store reachable again") == 1, log
            assert "Bridge disconnected" not in log, log
            assert "Traceback" not in log, log
        assert all(agent.poll() is None for agent in launch.processes if agent.name == "agent")
    finally:
        if launch is not None:
            launch.close()
        store.close()
