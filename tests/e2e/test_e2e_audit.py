# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The audit trail with real processes: `serve --audit-log`, the `bridges` commands'
admin events, SIGHUP after a rename, and `bridge-relay audit` reading it all back."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import psycopg
import trio

from relay.audit import OUTCOMES

from .e2e_support import (
    BRIDGE_NAME,
    RELAY,
    Bridge,
    Launcher,
    Postgres,
    clean_env,
    parse_assignments,
    relay_cli,
    run,
    wait_until,
)

SOCKS_USER, SOCKS_PASSWORD = "auditor", "socks-password-not-for-the-log"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
AGENT_ADDRESS = re.compile(r"127\.0\.0\.1:\d+")


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for_events(path: Path, what: str, predicate) -> list[dict]:
    def ready() -> bool:
        return predicate(events(path))

    await trio.to_thread.run_sync(wait_until, ready, what)
    return events(path)


def of_tunnel(all_events: list[dict], tunnel: str) -> list[dict]:
    return [e for e in all_events if e.get("tunnel") == tunnel]


async def answer_twice_plus_seven(stream: trio.SocketStream) -> None:
    """Reads until EOF, then answers 2n+7 bytes for the n it got, and closes (or stops
    when the connection is reset)."""
    async with stream:
        count = 0
        try:
            while data := await stream.receive_some(65536):
                count += len(data)
            await stream.send_all(b"r" * (2 * count + 7))
        except trio.BrokenResourceError:
            pass  # the tunnel was cut


async def exchange(stream: trio.abc.HalfCloseableStream, size: int) -> int:
    """Send `size` bytes and EOF, then count what comes back until EOF."""
    await stream.send_all(b"u" * size)
    await stream.send_eof()
    received = 0
    while data := await stream.receive_some(65536):
        received += len(data)
    return received


async def socks_connect(port: int, host: str, target_port: int) -> trio.SocketStream:
    """A SOCKS5 CONNECT with username and password, as curl --socks5-hostname does it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"\x05\x01\x02")
    assert await receive_exactly(stream, 2) == b"\x05\x02"
    user, password = SOCKS_USER.encode(), SOCKS_PASSWORD.encode()
    await stream.send_all(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    assert await receive_exactly(stream, 2) == b"\x01\x00"
    name = host.encode()
    request = bytes([5, 1, 0, 3, len(name)]) + name + target_port.to_bytes(2, "big")
    await stream.send_all(request)
    assert (await receive_exactly(stream, 10))[:2] == b"\x05\x00"
    return stream


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return data


def local_address(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getsockname()[:2]
    return f"{host}:{port}"


async def test_forward_and_socks_connections_are_audited(
    launch: Launcher, bridge: Bridge, tcp_server, tmp_path: Path
):
    target = await tcp_server(answer_twice_plus_seven)
    with socket.socket() as probe:  # a port that nothing listens on, not in the allow-list
        probe.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{probe.getsockname()[1]}"
    log = tmp_path / "audit.jsonl"
    args = ["--audit-log", log, "--audit-interval", "0.3", "--drain-timeout", "1"]
    args += ["--socks", "127.0.0.1:0"]
    args += ["--socks-user", SOCKS_USER, "--socks-password", SOCKS_PASSWORD]
    relay = await trio.to_thread.run_sync(lambda: launch.relay(target, refused, args=args))
    socks_port = int(relay.process.wait_for(r"^socks: listening on \S+:(\d+)$", stream="stdout")[1])
    await trio.to_thread.run_sync(lambda: launch.agent(relay, [target]))
    node = f"{socket.gethostname()}:{relay.agent_port}"
    forward_port = relay.forwards[target]
    forward_label = f"{bridge.name}={target}@127.0.0.1:{forward_port}"

    # A short forwarded connection, a SOCKS one, a refused one.
    async with await trio.open_tcp_stream("127.0.0.1", forward_port) as client:
        forward_client = local_address(client)
        assert await exchange(client, 3000) == 6007
    target_host, target_port = target.rsplit(":", 1)
    host = f"{target_host}.bridge-{bridge.name}"
    async with await socks_connect(socks_port, host, int(target_port)) as client:
        socks_client = local_address(client)
        assert await exchange(client, 1234) == 2475
    async with await trio.open_tcp_stream("127.0.0.1", relay.forwards[refused]) as client:
        refused_client = local_address(client)
        assert await client.receive_some(100) == b""  # the relay closes it: nothing opened

    # A long-lived connection: progress events with its bytes so far, then its close.
    async with await trio.open_tcp_stream("127.0.0.1", forward_port) as client:
        long_client = local_address(client)
        await client.send_all(b"p" * 100)

        def two_progress_events(found: list[dict]) -> bool:
            return (
                sum(
                    e["event"] == "tunnel.progress"
                    and e["caller"]["address"] == long_client
                    and e["bytes_up"] == 100
                    for e in found
                )
                >= 2
            )

        await wait_for_events(log, "two progress events", two_progress_events)
        await client.send_eof()
        received = 0
        while data := await client.receive_some(65536):
            received += len(data)
        assert received == 207

    # bridge-relay test: the relay opens a tunnel of its own.
    tested = await trio.to_thread.run_sync(relay_cli, bridge.data_dir, "test", bridge.name, target)
    assert tested.returncode == 0, tested.stderr

    found = await wait_for_events(
        log, "4 close events", lambda found: sum(e["event"] == "tunnel.close" for e in found) == 4
    )
    [probe] = [e for e in found if e["caller"]["kind"] == "test" and e["event"] == "tunnel.close"]
    assert probe["caller"] == {
        "kind": "test",
        "label": "bridge-relay test",
        "address": None,
        "user": None,
    }
    assert (probe["target"], probe["outcome"], probe["bytes_up"]) == (target, "ok", 0)
    everything, found = found, [e for e in found if e["caller"]["kind"] != "test"]
    by_client = {}
    for event in found:
        assert TIME.fullmatch(event["time"]), event
        assert event["outcome"] in OUTCOMES, event
        assert event["bridge"] == bridge.name and event["bridge_id"] == bridge.id, event
        assert event["node"] == node, event
        by_client.setdefault(event["caller"]["address"], []).append(event)

    opened, closed = by_client[forward_client]
    assert opened["tunnel"] == closed["tunnel"] and len(opened["tunnel"]) == 32
    for event in (opened, closed):
        assert event["caller"] == {
            "kind": "forward",
            "label": forward_label,
            "address": forward_client,
            "user": None,
        }
        assert event["target"] == target and event["agent_node"] == node
        assert AGENT_ADDRESS.fullmatch(event["agent"]), event
        assert event["outcome"] == "ok" and event["reason"] is None
    assert (opened["event"], opened["bytes_up"], opened["bytes_down"]) == ("tunnel.open", 0, 0)
    assert (closed["event"], closed["bytes_up"], closed["bytes_down"]) == (
        "tunnel.close",
        3000,
        6007,
    )
    assert 0 < opened["duration"] <= closed["duration"] < 30

    opened, closed = by_client[socks_client]
    assert opened["event"] == "tunnel.open" and closed["event"] == "tunnel.close"
    assert closed["caller"] == {
        "kind": "socks",
        "label": None,
        "address": socks_client,
        "user": SOCKS_USER,
    }
    assert closed["target"] == target and closed["outcome"] == "ok"
    assert (closed["bytes_up"], closed["bytes_down"]) == (1234, 2475)

    [refusal] = by_client[refused_client]
    assert refusal["event"] == "tunnel.open" and refusal["outcome"] == "refused"
    assert refusal["reason"] == f"Host not in allowed hosts list: {refused}"
    assert refusal["target"] == refused and refusal["agent_node"] == node
    assert (
        refusal["caller"]["label"] == f"{bridge.name}={refused}@127.0.0.1:{relay.forwards[refused]}"
    )

    opened, *progress, closed = by_client[long_client]
    assert len(progress) >= 2 and {e["event"] for e in progress} == {"tunnel.progress"}
    assert [e["duration"] for e in progress] == sorted(e["duration"] for e in progress)
    assert all(e["tunnel"] == opened["tunnel"] for e in (*progress, closed))
    assert (closed["bytes_up"], closed["bytes_down"], closed["outcome"]) == (100, 207, "ok")

    text = log.read_text()
    assert bridge.secret not in text and SOCKS_PASSWORD not in text
    assert "uuu" not in text and "rrr" not in text  # no payload

    # Read back: JSON as stored, filters, the table, a missing file.
    listed = await trio.to_thread.run_sync(
        relay_cli,
        bridge.data_dir,
        "audit",
        "--audit-log",
        str(log),
        "--bridge",
        bridge.id,
        "--since",
        "10m",
        "--json",
    )
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line) for line in listed.stdout.splitlines()] == everything
    none = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "audit", "--audit-log", str(log), "--since", "2999-01-01"
    )
    assert (none.returncode, none.stdout, none.stderr) == (0, "", "No audit events match.\n")
    shown = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "audit", "--audit-log", str(log), "--bridge", bridge.name
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "EVENT", "BRIDGE", "CALLER"]
    assert len(lines) == 1 + len(everything)
    assert any("refused" in line and "Host not in allowed hosts list" in line for line in lines)
    missing = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "audit", "--audit-log", str(tmp_path / "nope.jsonl")
    )
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("bridge-relay: cannot read the audit log ")

    # A tunnel still open when the relay stops is cut once the drain timeout has passed.
    async with await trio.open_tcp_stream("127.0.0.1", forward_port) as client:
        cut_client = local_address(client)
        await client.send_all(b"c" * 42)
        await wait_for_events(
            log,
            "the last tunnel's open",
            lambda found: any(e["caller"]["address"] == cut_client for e in found),
        )
        relay.process.popen.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(relay.process.wait) == 1  # it cut a tunnel
    [closed] = [
        e
        for e in events(log)
        if e["caller"]["address"] == cut_client and e["event"] == "tunnel.close"
    ]
    assert (closed["outcome"], closed["reason"]) == ("cut", "relay shutting down")
    assert (closed["bytes_up"], closed["bytes_down"]) == (42, 0)


async def test_admin_events_revocation_and_reopen_on_sighup(
    launch: Launcher, bridge: Bridge, tcp_server, tmp_path: Path
):
    target = await tcp_server(answer_twice_plus_seven)
    log = tmp_path / "audit.jsonl"
    relay = await trio.to_thread.run_sync(lambda: launch.relay(target, args=["--audit-log", log]))
    await trio.to_thread.run_sync(lambda: launch.agent(relay, [target]))
    forward_port = relay.forwards[target]

    # Rotated away by renaming: SIGHUP makes the relay write to a new file.
    async with await trio.open_tcp_stream("127.0.0.1", forward_port) as client:
        first = local_address(client)
        assert await exchange(client, 10) == 27
    await wait_for_events(log, "the first close", lambda found: len(found) == 2)
    log.rename(tmp_path / "audit.jsonl.1")
    os.kill(relay.process.popen.pid, signal.SIGHUP)
    await trio.to_thread.run_sync(lambda: relay.process.wait_for(r"\tAudit log reopened\t"))
    held = await trio.open_tcp_stream("127.0.0.1", forward_port)
    held_client = local_address(held)
    await held.send_all(b"h" * 5)
    await wait_for_events(log, "the held connection's open", lambda found: len(found) == 1)
    old = events(tmp_path / "audit.jsonl.1")
    assert [e["caller"]["address"] for e in old] == [first, first]

    # Admin changes, logged with --audit-log or RELAY_AUDIT_LOG; rotating cuts the tunnel.
    created = await trio.to_thread.run_sync(
        relay_cli,
        bridge.data_dir,
        "bridges",
        "create",
        "other",
        "--bcrypt-cost",
        "4",
        "--audit-log",
        str(log),
    )
    assert created.returncode == 0, created.stderr
    other = parse_assignments(created.stdout)
    env = clean_env(RELAY_AUDIT_LOG=str(log))
    deleted = await trio.to_thread.run_sync(
        lambda: run(
            [RELAY, "--data-dir", str(bridge.data_dir), "bridges", "delete", "--yes", "other"],
            env=env,
        )
    )
    assert deleted.returncode == 0, deleted.stderr
    rotated = await trio.to_thread.run_sync(
        relay_cli,
        bridge.data_dir,
        "bridges",
        "rotate",
        bridge.name,
        "--bcrypt-cost",
        "4",
        "--audit-log",
        str(log),
    )
    assert rotated.returncode == 0, rotated.stderr
    new_secret = parse_assignments(rotated.stdout)["BRIDGE_SECRET"]
    found = await wait_for_events(
        log,
        "the revoked tunnel's close",
        lambda found: any(e["event"] == "tunnel.close" for e in found),
    )
    await held.aclose()

    admin = [e for e in found if e["event"].startswith("bridge.")]
    assert [(e["event"], e["bridge"]) for e in admin] == [
        ("bridge.created", "other"),
        ("bridge.deleted", "other"),
        ("bridge.rotated", bridge.name),
    ]
    assert [e["bridge_id"] for e in admin] == [other["BRIDGE_ID"], other["BRIDGE_ID"], bridge.id]
    assert [e["command"] for e in admin] == [
        "bridge-relay bridges create",
        "bridge-relay bridges delete",
        "bridge-relay bridges rotate",
    ]
    assert all(TIME.fullmatch(e["time"]) and e["node"] == socket.gethostname() for e in admin)
    [closed] = [e for e in found if e["event"] == "tunnel.close"]
    assert closed["caller"]["address"] == held_client
    assert (closed["outcome"], closed["reason"]) == ("revoked", "bridge secret rotated")
    assert (closed["bytes_up"], closed["bytes_down"]) == (5, 0)
    text = log.read_text()
    for secret in (bridge.secret, other["BRIDGE_SECRET"], new_secret):
        assert secret not in text

    listed = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "audit", "--audit-log", str(log), "--bridge", "other", "--json"
    )
    assert [json.loads(line)["event"] for line in listed.stdout.splitlines()] == [
        "bridge.created",
        "bridge.deleted",
    ]


def test_a_postgresql_store_keeps_the_audit_trail_in_a_table(
    postgres: Postgres, postgres_url: str, tmp_path: Path
):
    data_dir, log = tmp_path / "relay-data", tmp_path / "audit.jsonl"
    created = relay_cli(
        data_dir, "--store", postgres_url, "bridges", "create", BRIDGE_NAME, "--bcrypt-cost", "4"
    )
    assert created.returncode == 0, created.stderr
    credentials = parse_assignments(created.stdout)
    fingerprint = relay_cli(data_dir, "fingerprint").stdout.strip()
    bridge = Bridge(
        data_dir, BRIDGE_NAME, credentials["BRIDGE_ID"], credentials["BRIDGE_SECRET"], fingerprint
    )
    launch = Launcher(bridge, tmp_path)
    try:
        relay = launch.relay(postgres.target, args=["--store", postgres_url, "--audit-log", log])
        launch.agent(relay, [postgres.target])
        result = postgres.psql("select 40 + 2", port=relay.forwards[postgres.target])
        assert (result.returncode, result.stdout) == (0, b"42\n"), result.stderr

        def table() -> list[tuple]:
            with psycopg.connect(postgres_url) as conn:
                return conn.execute(
                    "SELECT event, bridge, bridge_id, node, data FROM audit_events ORDER BY id"
                ).fetchall()

        wait_until(lambda: len(table()) == 3, "the admin event and the tunnel's two")
    finally:
        launch.close()
    rows = table()
    assert [row[0] for row in rows] == ["bridge.created", "tunnel.open", "tunnel.close"]
    assert {row[2] for row in rows} == {bridge.id}
    assert rows[0][4]["command"] == "bridge-relay bridges create"
    assert [row[4] for row in rows[1:]] == events(log)  # the same events as the file
    closed = rows[2][4]
    assert closed["outcome"] == "ok" and closed["bytes_up"] > 0 and closed["bytes_down"] > 0
    assert rows[2][3] == closed["node"] == f"{socket.gethostname()}:{relay.agent_port}"
