# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's and the agent's log lines: JSON with stable field names, syslog priorities
under journald, and never a secret, at any level."""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import sys
from functools import partial

import trio

from .e2e_support import AGENT, RELAY, Bridge, Launcher, Process, Relay, clean_env, free_port

DEBUG_JSON = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
PAYLOAD = bytes(range(256)) * 64
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PRIORITIES = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
# Runs ARGV with JOURNAL_STREAM naming its stderr, as systemd does for a service whose output
# goes to the journal.
UNDER_JOURNALD = [
    sys.executable,
    "-c",
    "import os, sys; s = os.fstat(2); "
    "os.environ['JOURNAL_STREAM'] = f'{s.st_dev}:{s.st_ino}'; os.execv(sys.argv[1], sys.argv[1:])",
]


def event(name: str) -> str:
    """A pattern for the JSON line of that event."""
    return f'"event": {re.escape(json.dumps(name))}'


def records(process: Process) -> list[dict]:
    """Every stderr line of `process` as a JSON object with the four leading fields."""
    parsed = []
    for line in process.stderr().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{process.name} log line is not JSON: {line!r}") from None
        assert list(record)[:4] == ["ts", "level", "logger", "event"], line
        assert TIMESTAMP.fullmatch(record["ts"]) and record["level"] in PRIORITIES, line
        assert record["logger"].split(".")[0] in ("bridge", "relay"), line
        parsed.append(record)
    assert parsed, f"{process.name} logged nothing"
    return parsed


def find(logged: list[dict], name: str, **fields) -> dict:
    """The first record of event `name`, which must have `fields` (with these values)."""
    record = next((r for r in logged if r["event"] == name), None)
    assert record is not None, f"no {name!r} event in {[r['event'] for r in logged]}"
    assert {key: record.get(key) for key in fields} == fields, record
    return record


async def echo(stream: trio.SocketStream) -> None:
    async for chunk in stream:
        await stream.send_all(chunk)


async def blocking(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def test_json_logs(launch: Launcher, bridge: Bridge, tcp_server):
    target, refused = await tcp_server(echo), f"127.0.0.1:{free_port()}"
    relay = await blocking(
        launch.relay, target, refused, args=["--log-format", "json", "--log-level", "DEBUG"]
    )
    agent = await blocking(launch.agent, relay, [target], wait=False, **DEBUG_JSON)
    await blocking(relay.process.wait_for, event("Bridge connected"))

    async with await trio.open_tcp_stream("127.0.0.1", relay.forwards[target]) as stream:
        await stream.send_all(PAYLOAD)
        await stream.send_eof()
        assert b"".join([chunk async for chunk in stream]) == PAYLOAD
    await blocking(agent.wait_for, event("Connection closed"))
    await blocking(relay.process.wait_for, event("Forwarded connection closed"))
    async with await trio.open_tcp_stream("127.0.0.1", relay.forwards[refused]):
        await blocking(relay.process.wait_for, event("Tunnel refused"))
    wrong_secret = secrets.token_urlsafe(32)
    wrong = await blocking(
        launch.agent, relay, [target], wait=False, BRIDGE_SECRET=wrong_secret, **DEBUG_JSON
    )
    assert await blocking(wrong.wait) == 78
    for process in (agent, relay.process):
        await blocking(process.stop, first=signal.SIGTERM)

    relay_logs, agent_logs, wrong_logs = map(records, (relay.process, agent, wrong))
    size = len(PAYLOAD)
    find(agent_logs, "Connecting to the relay", address=f"127.0.0.1:{relay.agent_port}")
    closed = find(
        agent_logs,
        "Connection closed",
        level="DEBUG",
        target=target,
        bytes=2 * size,
        bytes_sent=size,
        bytes_received=size,
    )
    assert isinstance(closed["stream"], int) and closed["duration"] >= 0
    denied = find(
        agent_logs, f"Host not in allowed hosts list: {refused}", level="WARNING", target=refused
    )
    assert isinstance(denied["stream"], int)
    find(relay_logs, "Bridge connected", bridge=bridge.name, id=bridge.id)
    forwarded = find(
        relay_logs,
        "Forwarded connection closed",
        bridge=bridge.name,
        target=target,
        bytes=2 * size,
        bytes_sent=size,
        bytes_received=size,
        clean=True,
    )
    assert forwarded["duration"] >= 0
    find(
        relay_logs,
        "Tunnel refused",
        level="WARNING",
        bridge=bridge.name,
        target=refused,
        reason=f"Host not in allowed hosts list: {refused}",
    )
    failed = find(relay_logs, "Authentication failed", level="WARNING", bridge_id=bridge.id)
    assert failed["peer"].startswith("127.0.0.1:")
    assert any(r["level"] == "ERROR" and "credentials" in r["event"] for r in wrong_logs)
    logs = launch.logs()
    assert bridge.secret not in logs and wrong_secret not in logs


def test_journald_priorities(launch: Launcher, bridge: Bridge):
    refused = f"127.0.0.1:{free_port()}"
    process = launch.start(
        "relay",
        [
            *UNDER_JOURNALD,
            RELAY,
            "--data-dir",
            bridge.data_dir,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            f"{bridge.name}={refused}",
        ],
    )
    port = process.wait_for(r"^agents: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")[1]
    forward = process.wait_for(r"^forward .*: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")[1]
    relay = Relay(process, int(port), {refused: int(forward)})
    env = clean_env(
        BRIDGE_ID=bridge.id,
        BRIDGE_SECRET=bridge.secret,
        RELAY_URL=relay.url,
        RELAY_FINGERPRINT=bridge.fingerprint,
        ALLOW="127.0.0.1:1",
    )
    agent = launch.start("agent", [*UNDER_JOURNALD, AGENT], env=env)
    agent.wait_for(r"^<6>INFO\tHandling incoming proxy connections$")
    process.wait_for(r"^<6>INFO\tBridge connected\t")
    relay.connected += 1
    with socket.create_connection(("127.0.0.1", relay.forwards[refused])):
        agent.wait_for(rf"^<4>WARNING\tHost not in allowed hosts list: {re.escape(refused)}\t")
        process.wait_for(r"^<4>WARNING\tTunnel refused\t")
    wrong = launch.start(
        "agent", [*UNDER_JOURNALD, AGENT], env=env | {"BRIDGE_SECRET": secrets.token_urlsafe(32)}
    )
    assert wrong.wait() == 78
    process.wait_for(r"^<4>WARNING\tAuthentication failed\t")
    # A JOURNAL_STREAM inherited by a process whose stderr goes elsewhere is not the journal.
    inherited = launch.agent(relay, ["127.0.0.1:1"], JOURNAL_STREAM="8:12345")
    for stopped in (agent, inherited, process):
        stopped.stop(first=signal.SIGTERM)

    seen = set()
    for journald in (process, agent, wrong):
        for line in journald.stderr().splitlines():
            prefix = re.match(r"<(\d)>(\w+)\t", line)
            assert prefix and PRIORITIES.get(prefix[2]) == int(prefix[1]), line
            seen.add(int(prefix[1]))
    assert {3, 4, 6} <= seen
    for line in inherited.stderr().splitlines():
        assert TIMESTAMP.match(line), line
    assert bridge.secret not in launch.logs()
