# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay --store postgresql://...`: real relays, agents, psql and PostgreSQL servers.

The bridge store and the database reached through the tunnel are different servers where a
test stops the store."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import psycopg
import pytest

from .e2e_support import (
    REVOCATION_BOUND,
    Bridge,
    Launcher,
    Postgres,
    end_query,
    free_port,
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


def _pg_bridge(tmp_path: Path, url: str, template: Bridge) -> Bridge:
    """A bridge created with `--store URL`; the relay certificate (`template`'s) in a data
    dir of its own."""
    return create_bridge(tmp_path, "--store", url, certificate=template)


def test_relay_on_postgres_serves_psql_and_delete_elsewhere_cuts_the_tunnel(
    postgres: Postgres, postgres_url: str, bridge_template: Bridge, tmp_path: Path
):
    bridge = _pg_bridge(tmp_path, postgres_url, bridge_template)
    launch = Launcher(bridge, tmp_path)
    try:
        relay = launch.relay(postgres.target, args=["--store", postgres_url])
        agent = launch.agent(relay, [postgres.target])
        result = postgres.psql("select 40 + 2", port=relay.forwards[postgres.target])
        assert (result.returncode, result.stdout) == (0, b"42\n"), result.stderr
        # A long query is in flight when the bridge is deleted on a machine with no relay.
        query = long_query()
        psql = launch.start("psql", postgres.psql_argv(query, relay.forwards[postgres.target]))
        wait_until_running(postgres, query)
        elsewhere = tmp_path / "admin-machine"
        revoke(
            lambda: relay_cli(
                elsewhere, "--store", postgres_url, "bridges", "delete", "e2e", "--yes"
            ),
            "bridge deleted",
            [relay.process],
            [agent],
        )
        assert psql.wait(timeout=10) != 0
        assert not (elsewhere / "bridges.db").exists()
    finally:
        launch.close()


def test_store_copy_keeps_secrets_and_rotate_elsewhere_cuts_the_tunnel(
    postgres: Postgres, postgres_url: str, launch: Launcher, bridge: Bridge, tmp_path: Path
):
    copied = relay_cli(bridge.data_dir, "store", "copy", "--to", postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.startswith("Copied 1 bridge from sqlite://")
    (bridge.data_dir / "bridges.db").rename(bridge.data_dir / "old.db")  # only PostgreSQL now

    relay = launch.relay(postgres.target, args=["--store", postgres_url])
    agent = launch.agent(relay, [postgres.target])  # the secret made for SQLite
    result = postgres.psql("select 7", port=relay.forwards[postgres.target])
    assert (result.returncode, result.stdout) == (0, b"7\n"), result.stderr

    revoke(
        lambda: relay_cli(
            tmp_path / "elsewhere", "--store", postgres_url, "bridges", "rotate", "e2e"
        ),
        "bridge secret rotated",
        [relay.process],
        [agent],
    )


def test_unreachable_store_at_start_is_one_line_and_exit_1(tmp_path: Path):
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/relay"
    for argv in (["serve", "--listen", "127.0.0.1:0"], ["bridges", "list"]):
        done = relay_cli(tmp_path / "data", "--store", url, *argv)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert re.fullmatch(
            r"bridge-relay: bridge store postgresql://postgres@127\.0\.0\.1:\d+/relay: "
            r".*Connection refused.*",
            lines[0],
        ), lines[0]
    bad = relay_cli(tmp_path / "data", "--store", "postgresql://h/db?nonsense=1", "bridges", "list")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr


def test_store_outage_keeps_tunnels_and_logins_and_logs_each_change_once(
    postgres: Postgres, bridge_template: Bridge, tmp_path: Path
):
    store = PostgresServer(tmp_path / "store-logs")
    (tmp_path / "store-logs").mkdir()
    store.start()
    launch = None
    try:
        url = store.create_database()
        bridge = _pg_bridge(tmp_path, url, bridge_template)
        launch = Launcher(bridge, tmp_path)
        relay = launch.relay(postgres.target, args=["--store", url])
        launch.agent(relay, [postgres.target])
        port = relay.forwards[postgres.target]
        # A session that queries through the tunnel for the whole outage.
        script = tmp_path / "steady.sql"
        script.write_text("".join(f"select {i} from pg_sleep(0.25);\n" for i in range(64)))
        steady = launch.start("psql-steady", [*postgres.psql_argv("", port)[:-2], "-f", script])
        steady.wait_for(r"^3$", stream="stdout")

        store.stop()
        relay.process.wait_for(r"\tBridge store unreachable", timeout=10)
        # New tunnels, and a new login of the admitted bridge, work from memory.
        for i in range(3):
            result = postgres.psql(f"select {i}", port=port)
            assert (result.returncode, result.stdout) == (0, f"{i}\n".encode()), result.stderr
        launch.agent(relay, [postgres.target])
        time.sleep(7)
        store.start()
        relay.process.wait_for(r"\tBridge store reachable again", timeout=15)

        assert steady.wait(timeout=60) == 0, steady.stderr()
        assert steady.stdout().split() == [str(i) for i in range(64)]
        log = relay.process.stderr()
        assert log.count("Bridge store unreachable") == 1, log
        assert log.count("Bridge store reachable again") == 1, log
        assert relay.process.poll() is None
        assert "Traceback" not in log
        # Writes held in memory reach the store; revocation works again.
        with psycopg.connect(url) as conn:
            seen = conn.execute("select last_seen_at from bridges").fetchone()
        assert seen is not None and seen[0] is not None
        done = relay_cli(
            tmp_path / "elsewhere", "--store", url, "bridges", "delete", "e2e", "--yes"
        )
        assert done.returncode == 0, done.stderr
        relay.process.wait_for(r"\"reason\": \"bridge deleted\"", timeout=REVOCATION_BOUND + 1)
    finally:
        if launch is not None:
            launch.close()
        store.close()


def test_nodes_lists_the_relays_sharing_a_store(
    postgres: Postgres, postgres_url: str, bridge_template: Bridge, tmp_path: Path
):
    bridge = _pg_bridge(tmp_path, postgres_url, bridge_template)
    launch = Launcher(bridge, tmp_path)
    try:
        node_timeout = "1.5"  # the relays' and the listing's: a killed node is gone after it
        store_args = ["--store", postgres_url, "--node-timeout", node_timeout]
        first = launch.relay(postgres.target, args=[*store_args, "--node", "first"])
        second = launch.relay(
            args=[*store_args, "--node", "second", "--data-dir", tmp_path / "second-data"]
        )
        launch.agent(first, [postgres.target])
        query = long_query(30)
        psql = launch.start("psql", postgres.psql_argv(query, first.forwards[postgres.target]))
        wait_until_running(postgres, query)

        def nodes() -> dict[str, dict]:
            return list_nodes(postgres_url, tmp_path / "elsewhere", node_timeout)

        wait_until(lambda: nodes()["first"]["streams"] == 1, "the heartbeat with the tunnel")
        listed = nodes()
        assert set(listed) == {"first", "second"}
        assert listed["first"]["agent_address"] == f"127.0.0.1:{first.agent_port}"
        assert (listed["first"]["bridges"], listed["second"]["bridges"]) == (1, 0)
        assert all(row["alive"] and row["heartbeat_age"] < 1.5 for row in listed.values())

        # A relay started with a live node's name (as after a kill -9 and a restart within
        # the node timeout) takes it over, and says so; the other one says it lost it.
        third = launch.relay(
            args=[*store_args, "--node", "first", "--data-dir", tmp_path / "third-data"]
        )
        third.process.wait_for(r"\tWARNING\tNode name taken over from a process", timeout=5)
        first.process.wait_for(r"\tWARNING\tNode name held by another relay", timeout=5)
        assert nodes()["first"]["agent_address"] == f"127.0.0.1:{third.agent_port}"
        third.process.stop(first=signal.SIGTERM)
        wait_until(
            lambda: (
                nodes().get("first", {}).get("agent_address") == f"127.0.0.1:{first.agent_port}"
            ),
            "the first relay to hold its name again",
            10,
        )
        # A relay killed outright is gone after the node timeout; one stopped cleanly leaves.
        second.process.stop()  # SIGKILL
        wait_until(lambda: not nodes()["second"]["alive"], "the killed node to be gone", 10)
        psql.stop()
        end_query(postgres, query)
        first.process.stop(first=signal.SIGTERM)
        wait_until(lambda: "first" not in nodes(), "the stopped node to leave", 10)
    finally:
        launch.close()
