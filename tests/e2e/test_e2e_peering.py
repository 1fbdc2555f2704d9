# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Relay nodes of a cluster (`serve --store postgresql://... --peer-listen`) as real
processes: tunnels through a peer hop, and what the peer port lets in."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio

from relay.peer_handshake import Prelude, encode_prelude

from .e2e_support import (
    Launcher,
    Postgres,
    Relay,
    dropped_by_reason,
    relay_cli,
    wait_until,
)
from .process_fixtures import create_bridge

pytestmark = pytest.mark.interop

CONCURRENT = 200


def _linked(nodes: list[Relay]) -> None:
    """Every node logged a link up with each of the others."""
    for node in nodes:
        node.process.wait_for(r"\tPeer link up\t", count=len(nodes) - 1)


def _reaches(postgres: Postgres, port: int) -> bool:
    result = postgres.psql("select 1", port=port)
    return result.returncode == 0 and result.stdout == b"1\n"


def test_psql_through_node_3_reaches_the_agent_on_node_1(
    postgres: Postgres, postgres_url: str, cluster: Launcher
):
    one = cluster.node("node-1", postgres_url)
    two = cluster.node("node-2", postgres_url)
    three = cluster.node("node-3", postgres_url, postgres.target)
    _linked([one, two, three])
    cluster.agent(one, [postgres.target])
    port = three.forwards[postgres.target]
    wait_until(lambda: _reaches(postgres, port), "psql through node-3", timeout=10)

    postgres.check_same_result(
        "select string_agg(md5(i::text), '') from generate_series(1, 200000) i", port
    )
    # The agent is on node 1 only: node 3 reached it through the peer link.
    assert "Bridge connected" not in three.process.stderr()

    def listed() -> dict[str, dict]:
        nodes = relay_cli(cluster.bridge.data_dir, "--store", postgres_url, "nodes", "--json")
        assert nodes.returncode == 0, nodes.stderr
        return {row["name"]: row for row in map(json.loads, nodes.stdout.splitlines())}

    def presence() -> tuple:
        rows = listed()
        return rows["node-1"]["held"], rows["node-1"]["links"], rows["node-3"]["links"]

    expected = ([cluster.bridge.id], ["node-2", "node-3"], ["node-1", "node-2"])
    wait_until(lambda: presence() == expected, "the nodes' presence in the store", timeout=10)
    rows = listed()
    assert rows["node-1"]["peer_address"] == f"127.0.0.1:{one.peer_port}"
    assert rows["node-1"]["peer_fingerprint"].startswith("sha256:")
    table = relay_cli(cluster.bridge.data_dir, "--store", postgres_url, "nodes")
    assert "node-2,node-3" in table.stdout and rows["node-1"]["peer_fingerprint"] in table.stdout


def test_200_concurrent_connections_through_the_peer_hop(postgres_url: str, cluster: Launcher):
    async def echo_and_clients() -> list[bool]:
        async def echo(stream: trio.SocketStream) -> None:
            async with stream:
                try:
                    while data := await stream.receive_some(65536):
                        await stream.send_all(data)
                    await stream.send_eof()
                except trio.BrokenResourceError:
                    pass

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
            target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            one = cluster.node("node-1", postgres_url)
            three = cluster.node("node-3", postgres_url, target)
            await trio.to_thread.run_sync(_linked, [one, three])
            await trio.to_thread.run_sync(lambda: cluster.agent(one, [target]))
            port = three.forwards[target]
            results: list[bool] = []

            async def client(index: int) -> None:
                payload = os.urandom(32 * 1024) + index.to_bytes(4, "big")
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(payload)
                    await stream.send_eof()
                    received = bytearray()
                    while data := await stream.receive_some(65536):
                        received += data
                results.append(bytes(received) == payload)

            # The first one waits for node 3 to learn where the bridge is.
            with trio.fail_after(20):
                while True:
                    try:
                        await client(-1 % 2**32)
                    except trio.BrokenResourceError:
                        pass
                    if results and results[-1]:
                        break
                    results.clear()
                    await trio.sleep(0.2)
            results.clear()
            with trio.fail_after(60):
                async with trio.open_nursery() as clients:
                    for index in range(CONCURRENT):
                        clients.start_soon(client, index)
            nursery.cancel_scope.cancel()
        return results

    results = trio.run(echo_and_clients)
    assert len(results) == CONCURRENT
    assert all(results)


def test_unregistered_certificate_cannot_open_a_peer_link(
    postgres_server, postgres_url: str, cluster: Launcher, tmp_path: Path
):
    one = cluster.node("node-1", postgres_url)
    one.process.wait_for(r"\tPeer listener ready\t")
    wait_until(
        lambda: (
            "sha256:"
            in relay_cli(cluster.bridge.data_dir, "--store", postgres_url, "nodes", "--json").stdout
        ),
        "node-1's peer certificate in the store",
    )
    (registered,) = [
        line
        for line in relay_cli(
            cluster.bridge.data_dir, "--store", postgres_url, "nodes", "--json"
        ).stdout.splitlines()
        if '"node-1"' in line
    ]
    fingerprint = registered.split('"peer_fingerprint":"')[1].split('"')[0]
    # A stranger's store lists node-1 (its address and real fingerprint) as a node of its
    # own cluster, so the stranger dials it; node-1's store has never heard of the stranger.
    other_store = postgres_server.create_database()
    stranger_bridge = create_bridge(tmp_path / "stranger", "--store", other_store)
    with psycopg.connect(other_store, autocommit=True) as conn:
        conn.execute(
            "insert into nodes (name, instance, agent_address, peer_address, peer_fingerprint,"
            " started_at, heartbeat_at) values ('node-9', 'x', '127.0.0.1:1', %s, %s, 0,"
            " extract(epoch from now()) + 3600)",
            (f"127.0.0.1:{one.peer_port}", fingerprint),
        )
    stranger = Launcher(stranger_bridge, tmp_path / "stranger")
    try:
        stranger.node("node-0", other_store)
        refused = one.process.wait_for(r"\tWARNING\tPeer link refused\t.*", timeout=15)
        assert "not the one registered for a live node node-0" in refused[0]
        stranger.processes[0].wait_for(r"\tCannot reach peer\t.*refused by node-9")
    finally:
        stranger.close()
    assert "Peer link up" not in one.process.stderr()


def test_garbage_on_the_peer_port_is_dropped_like_on_the_agent_port(
    postgres_url: str, cluster: Launcher
):
    # Drops beyond the first five of an interval are only summed up at its end: a short
    # interval, so that the sixth is counted within a second, not ten.
    one = cluster.node(
        "node-1",
        postgres_url,
        args=["--handshake-timeout", "1"],
        env={"RELAY_LOG_INTERVAL": "1"},
    )
    assert one.peer_port is not None
    for port in (one.agent_port, one.peer_port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            try:
                assert sock.recv(100) == b""  # closed, unanswered
            except ConnectionResetError:
                pass  # closed with unread bytes: a reset
        with socket.create_connection(("127.0.0.1", port)):
            time.sleep(1.5)  # silent past the handshake deadline
        # TLS from someone who then sends no peer proof at all (on the peer port, after a
        # prelude naming the node).
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port))
        if port == one.peer_port:
            raw.sendall(encode_prelude(Prelude("node-1")))
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"\x00" * 600)
            tls.settimeout(10)
            try:
                while tls.recv(100):
                    pass
            except (ssl.SSLError, OSError):
                pass

    def counted() -> bool:
        return sum(dropped_by_reason(one.process.stderr()).values()) >= 6

    wait_until(counted, "six connections dropped")
    reasons = dropped_by_reason(one.process.stderr())
    assert reasons["handshake timed out"] == 2, reasons
    # The request line: a TLS error on the agent port, no prelude on the peer port.
    assert reasons["TLS error: HTTP_REQUEST"] == 1, reasons
    assert reasons["malformed peer handshake: not a trio-bridge peer link"] == 1, reasons
    assert one.process.poll() is None
