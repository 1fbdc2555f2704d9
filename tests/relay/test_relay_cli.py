# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay` as a user runs it: real processes, real output, real exit codes."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import trio

from relay import SQLiteStore
from relay.certificates import fingerprint
from relay.cli import build_parser

from .relay_support import COST, RunningAgent, receive_all

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT = 30
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("RELAY_", "LOG_")):
            monkeypatch.delenv(name)
    return {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_BCRYPT_COST": str(COST)}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "relay-data"


def cli(env, data_dir, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        **kwargs,
    )


def test_bridge_lifecycle(env, data_dir):
    created = cli(env, data_dir, "bridges", "create", "prod")
    assert created.returncode == 0, created.stderr
    id_line, secret_line = created.stdout.splitlines()
    assert re.fullmatch(f"BRIDGE_ID={UUID}", id_line)
    assert re.fullmatch(r"BRIDGE_SECRET=[A-Za-z0-9_-]{43}", secret_line)
    assert "cannot be shown again" in created.stderr
    bridge_id, secret = id_line.split("=", 1)[1], secret_line.split("=", 1)[1]

    listed = cli(env, data_dir, "bridges", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "CREATED", "STATUS", "LAST", "SEEN"]
    assert row.split()[:2] == ["prod", bridge_id]
    assert "disconnected" in row and row.endswith("never")
    assert "No relay is running" in listed.stderr

    rotated = cli(env, data_dir, "bridges", "rotate", bridge_id)
    assert rotated.returncode == 0
    new_secret = re.fullmatch(r"BRIDGE_SECRET=(\S{43})\n", rotated.stdout)[1]
    store = SQLiteStore(data_dir / "bridges.db")
    stored = store.get("prod").secret_hash
    assert bcrypt.checkpw(new_secret.encode(), stored)
    assert not bcrypt.checkpw(secret.encode(), stored)
    assert stored.startswith(b"$2b$04$")

    deleted = cli(env, data_dir, "bridges", "delete", "--yes", "prod")
    assert deleted.returncode == 0 and "Deleted bridge prod" in deleted.stdout
    assert store.find(bridge_id) is None
    store.close()
    assert cli(env, data_dir, "bridges", "list").stdout == ""


def test_fingerprint_is_stable_and_matches_the_certificate(env, data_dir):
    assert cli(env, data_dir, "bridges", "create", "prod").returncode == 0  # makes the data dir
    first = cli(env, data_dir, "fingerprint")
    assert first.returncode == 0
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", first.stdout)
    assert first.stdout.strip() == fingerprint(data_dir / "relay.crt")
    assert cli(env, data_dir, "fingerprint").stdout == first.stdout
    other = cli(env, data_dir, "fingerprint", "--cert", str(data_dir / "relay.crt"))
    assert other.stdout == first.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "a command is required"),
        (["frobnicate"], "invalid choice"),
        (["bridges"], "bridges needs an action"),
        (["serve", "--listen", "nohost"], "invalid HOST:PORT 'nohost'"),
        (["serve", "--listen", "127.0.0.1:99999"], "the port must be a number"),
        (["serve", "--forward", "prod"], "invalid forward 'prod'"),
        (["serve", "--agent-advertise", "0.0.0.0:4000"], "not an address agents can dial"),
        (["serve", "--agent-advertise", "relay1"], "invalid HOST:PORT 'relay1'"),
        (["serve", "--forward", "prod=db:5432@nowhere"], "invalid HOST:PORT 'nowhere'"),
        (
            ["serve", "--cert", "/nonexistent/relay.pem", "--key", "/nonexistent/relay.key"],
            "cannot read certificate file /nonexistent/relay.pem",
        ),
        (["serve", "--cert", "/nonexistent/relay.pem"], "--cert and --key must be given together"),
        (["serve", "--log-level", "LOUD"], "invalid log level"),
        (["serve", "--handshake-timeout", "soon"], "invalid duration"),
        (["serve", "--drain-timeout", "-1"], "invalid duration '-1'"),
        (["serve", "--max-pending", "0"], "invalid number '0': expected a whole number above 0"),
        (["serve", "--max-streams-per-bridge", "many"], "invalid number 'many'"),
        (["fingerprint", "--cert", "/nonexistent/relay.pem"], "cannot read certificate file"),
        (["bridges", "create", "bad name"], "invalid bridge name"),
        (["bridges", "create", "x", "--bcrypt-cost", "99"], "bcrypt cost must be between 4 and 31"),
        (["bridges", "delete", "nope"], "Unknown bridge: nope"),
        (["bridges", "rotate", "nope"], "Unknown bridge: nope"),
        (["test", "nope", "db:5432"], "Unknown bridge: nope"),
        (["test", "nope", "db"], "invalid HOST:PORT 'db'"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(env, data_dir, args, message):
    SQLiteStore(data_dir / "bridges.db").list()  # an existing, empty data dir
    result = cli(env, data_dir, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("bridge-relay: error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_bad_environment_is_reported_like_bad_flags(env, data_dir):
    result = cli({**env, "RELAY_LISTEN": "everywhere"}, data_dir, "serve")
    assert result.returncode == 2
    assert result.stderr.startswith("bridge-relay: error: ") and "'everywhere'" in result.stderr
    result = cli({**env, "RELAY_FORWARD": "prod=db"}, data_dir, "serve")
    assert result.returncode == 2 and "RELAY_FORWARD" in result.stderr
    result = cli({**env, "RELAY_MAX_PENDING_OPENS": "-5"}, data_dir, "serve")
    assert result.returncode == 2 and "invalid number '-5'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_test_without_a_running_relay(env, data_dir):
    assert cli(env, data_dir, "bridges", "create", "prod").returncode == 0
    result = cli(env, data_dir, "test", "prod", "db:5432")
    assert result.returncode == 1
    assert "no relay is running" in result.stderr and result.stderr.count("\n") == 1


def _subcommand_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subcommand_parsers(sub)


def test_every_flag_documents_its_default():
    for parser in _subcommand_parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert "default" in (action.help or ""), (parser.prog, action.option_strings)
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
    )
    for name in [
        "RELAY_DATA_DIR",
        "RELAY_STORE",
        "RELAY_LISTEN",
        "RELAY_CERT",
        "RELAY_KEY",
        "RELAY_FORWARD",
        "RELAY_HANDSHAKE_TIMEOUT",
        "RELAY_CONNECT_TIMEOUT",
        "RELAY_BCRYPT_COST",
        "RELAY_DRAIN_TIMEOUT",
        "RELAY_KEEPALIVE_INTERVAL",
        "RELAY_KEEPALIVE_TIMEOUT",
        "RELAY_MAX_PENDING",
        "RELAY_AUTH_FAILURES_PER_MINUTE",
        "RELAY_MAX_STREAMS_PER_BRIDGE",
        "RELAY_MAX_PENDING_OPENS",
        "LOG_LEVEL",
        "LOG_FORMAT",
    ]:
        assert name in result.stdout


async def _run_cli(env, data_dir, *args) -> subprocess.CompletedProcess:
    return await trio.run_process(
        [sys.executable, "-m", "relay", "--data-dir", str(data_dir), *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _read_lines(stream, count: int, buffer: bytearray) -> list[str]:
    while buffer.count(b"\n") < count:
        data = await stream.receive_some()
        assert data, "serve exited early"
        buffer += data
    return bytes(buffer).decode().splitlines()[:count]


async def _serve_process(env, data_dir, echo_port: int, *args: str, stderr: int):
    """Creates bridge prod, then starts ``relay serve`` with a forward to `echo_port` and
    `args`. Returns the process and an agent for bridge prod that pins the relay and may
    reach `echo_port`, given the relay URL."""
    from bridge.agent.agent import Agent
    from bridge.transport.tls import client_ssl_context

    created = await _run_cli(env, data_dir, "bridges", "create", "prod")
    values = dict(line.split("=", 1) for line in created.stdout.decode().splitlines())
    pin = (await _run_cli(env, data_dir, "fingerprint")).stdout.decode().strip()
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "relay", "--data-dir", str(data_dir), "serve"),
            *("--listen", "127.0.0.1:0", "--forward", f"prod=127.0.0.1:{echo_port}", *args),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )

    def make_agent(url: str) -> Agent:
        return Agent(
            url,
            values["BRIDGE_ID"],
            values["BRIDGE_SECRET"],
            [f"127.0.0.1:{echo_port}"],
            client_ssl_context(fingerprint=pin),
        )

    return process, values, make_agent


async def test_serve_forward_and_test_as_separate_processes(env, data_dir, nursery, echo_port):
    with trio.fail_after(TIME_LIMIT):
        process, values, make_agent = await _serve_process(
            env, data_dir, echo_port, stderr=subprocess.PIPE
        )
        stderr = bytearray()

        async def collect_stderr():
            while data := await process.stderr.receive_some():
                stderr.extend(data)

        nursery.start_soon(collect_stderr)
        try:
            agents_line, forward_line = await _read_lines(process.stdout, 2, bytearray())
            match = re.fullmatch(r"agents: listening on 127\.0\.0\.1:(\d+)", agents_line)
            relay_port = int(match[1])
            match = re.fullmatch(
                rf"forward prod -> 127\.0\.0\.1:{echo_port}: listening on 127\.0\.0\.1:(\d+)",
                forward_line,
            )
            forward_port = int(match[1])

            agent = make_agent(f"tls://127.0.0.1:{relay_port}")
            await nursery.start(RunningAgent(agent).run)

            ok = await _run_cli(env, data_dir, "test", "prod", f"127.0.0.1:{echo_port}")
            assert ok.returncode == 0
            assert ok.stdout.decode() == (
                f"OK: prod reached 127.0.0.1:{echo_port} via 127.0.0.1:{echo_port}\n"
            )
            refused = await _run_cli(env, data_dir, "test", "prod", "db:5432")
            assert refused.returncode == 1
            assert refused.stderr.decode() == "Host not in allowed hosts list: db:5432\n"
            listed = await _run_cli(env, data_dir, "bridges", "list")
            assert "connected (127.0.0.1:" in listed.stdout.decode()

            # The same for scripts: --json.
            ok = await _run_cli(env, data_dir, "test", "prod", f"127.0.0.1:{echo_port}", "--json")
            assert ok.returncode == 0
            assert json.loads(ok.stdout) == {
                "ok": True,
                "bridge": "prod",
                "target": f"127.0.0.1:{echo_port}",
                "address": f"127.0.0.1:{echo_port}",
            }
            refused = await _run_cli(env, data_dir, "test", "prod", "db:5432", "--json")
            assert refused.returncode == 1
            assert json.loads(refused.stdout) == {
                "ok": False,
                "bridge": "prod",
                "target": "db:5432",
                "error": "Host not in allowed hosts list: db:5432",
            }
            listed = await _run_cli(env, data_dir, "bridges", "list", "--json")
            (row,) = map(json.loads, listed.stdout.decode().splitlines())
            assert row["name"] == "prod" and row["connected"] is True
            assert row["agents"][0].startswith("127.0.0.1:")

            client = await trio.open_tcp_stream("127.0.0.1", forward_port)
            async with client:
                await client.send_all(b"through the forward")
                await client.send_eof()
                assert await receive_all(client) == b"through the forward"
        finally:
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    text = stderr.decode()
    assert "Bridge connected" in text and "Traceback" not in text
    assert values["BRIDGE_SECRET"] not in text
    assert not (data_dir / "relay.sock").exists()


def test_demo_runs_on_its_own(env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"forward demo -> 127\.0\.0\.1:\d+: listening on 127\.0\.0\.1:\d+", result.stdout
    )
    assert re.search(r"curl http://127\.0\.0\.1:\d+/", result.stdout)
    assert result.stdout.count("200 OK") == 3
    assert "Host not in allowed hosts list" in result.stdout
    assert result.stdout.endswith(
        "The demo is over and the tunnel is gone (run in a terminal "
        "without --once, it stays up until Ctrl-C).\n"
    )
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_does_not_offer_a_data_dir_it_would_not_use(env):
    shown = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
    )
    assert shown.returncode == 0 and "--data-dir" not in shown.stdout


async def test_serve_accepts_agents_over_websocket(env, data_dir, nursery, echo_port):
    with trio.fail_after(TIME_LIMIT):
        process, _, make_agent = await _serve_process(
            env, data_dir, echo_port, "--listen-ws", "127.0.0.1:0", stderr=subprocess.DEVNULL
        )
        try:
            _, ws_line, forward_line = await _read_lines(process.stdout, 3, bytearray())
            match = re.fullmatch(
                r"agents \(WebSocket\): listening on 127\.0\.0\.1:(\d+), path /bridge", ws_line
            )
            url = f"wss://127.0.0.1:{match[1]}/bridge"
            forward_port = int(forward_line.rpartition(":")[2])
            await nursery.start(RunningAgent(make_agent(url)).run)
            async with await trio.open_tcp_stream("127.0.0.1", forward_port) as client:
                await client.send_all(b"over WebSocket")
                await client.send_eof()
                assert await receive_all(client) == b"over WebSocket"
        finally:
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
