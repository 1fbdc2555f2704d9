# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay` as an operator meets it: versions, data dirs that do not exist, one relay
per data dir, confirmation before a delete, JSON for scripts. Real processes throughout."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import __version__
from relay.certificates import fingerprint

from .relay_support import COST

ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("bridge-relay"))
AGENT = str(Path(sys.executable).with_name("bridge-agent"))
TIME_LIMIT = 30


@pytest.fixture
def env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("RELAY_", "LOG_", "BRIDGE_")):
            monkeypatch.delenv(name)
    return {**os.environ, "RELAY_BCRYPT_COST": str(COST)}


def run(env, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=TIME_LIMIT, **kwargs
    )


@pytest.mark.parametrize("command", [RELAY, AGENT])
def test_version(env, command):
    result = run(env, command, "--version")
    assert result.returncode == 0
    assert result.stdout == f"{Path(command).name} {__version__}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["fingerprint"],
        ["bridges", "list"],
        ["bridges", "list", "--json"],
        ["bridges", "delete", "--yes", "prod"],
        ["bridges", "rotate", "prod"],
        ["test", "prod", "db:5432"],
    ],
)
def test_commands_that_read_refuse_a_missing_data_dir(env, tmp_path, args):
    missing = tmp_path / "relay-dta"  # a typo
    result = run(env, RELAY, "--data-dir", str(missing), *args)
    assert result.returncode == 1
    assert result.stderr == (
        f"bridge-relay: no relay data dir at {missing} (give --data-dir or RELAY_DATA_DIR; "
        "'bridge-relay bridges create NAME' or 'bridge-relay serve' makes one)\n"
    )
    assert not missing.exists()


def test_the_default_data_dir_is_named_in_full(env, tmp_path):
    result = run(env, RELAY, "fingerprint", cwd=tmp_path)
    assert result.returncode == 1
    assert f"no relay data dir at {tmp_path / 'relay-data'} " in result.stderr


def test_bridges_create_makes_the_certificate_that_fingerprint_shows(env, tmp_path):
    data_dir = tmp_path / "relay-data"
    assert run(env, RELAY, "bridges", "create", "prod", cwd=tmp_path).returncode == 0
    shown = run(env, RELAY, "fingerprint", cwd=tmp_path)
    assert shown.returncode == 0
    assert shown.stdout == fingerprint(data_dir / "relay.crt") + "\n"
    listed = run(env, RELAY, "bridges", "list", "--json", cwd=tmp_path)
    (row,) = map(json.loads, listed.stdout.splitlines())
    assert row["name"] == "prod" and row["connected"] is None and row["agents"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["created_at"])
    assert row["last_seen_at"] is None


def test_delete_needs_yes_without_a_terminal(env, tmp_path):
    data_dir = str(tmp_path / "d")
    assert run(env, RELAY, "--data-dir", data_dir, "bridges", "create", "prod").returncode == 0
    refused = run(env, RELAY, "--data-dir", data_dir, "bridges", "delete", "prod", input="y\n")
    assert refused.returncode == 2
    assert refused.stderr == (
        "bridge-relay: error: not deleting bridge prod without confirmation: stdin is not a "
        "terminal; pass --yes\n"
    )
    deleted = run(env, RELAY, "--data-dir", data_dir, "bridges", "delete", "prod", "--yes")
    assert deleted.returncode == 0 and "Deleted bridge prod" in deleted.stdout


def _on_a_terminal(env, args, answer: bytes) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr; answer its prompt."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + TIME_LIMIT
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the command exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if not answered and b"[y/N]" in output:
            os.write(controller, answer)
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(controller)
    return process.wait(TIME_LIMIT), output.decode()


def test_delete_asks_on_a_terminal(env, tmp_path):
    data_dir = str(tmp_path / "d")
    assert run(env, RELAY, "--data-dir", data_dir, "bridges", "create", "prod").returncode == 0
    delete = [RELAY, "--data-dir", data_dir, "bridges", "delete", "prod"]
    status, output = _on_a_terminal(env, delete, b"n\n")
    assert status == 1
    assert "Delete bridge prod (" in output and "bridge prod not deleted" in output
    status, output = _on_a_terminal(env, delete, b"y\n")
    assert status == 0 and "Deleted bridge prod" in output
    listed = run(env, RELAY, "--data-dir", data_dir, "bridges", "list", "--json")
    assert listed.stdout == ""


def test_a_second_relay_refuses_the_same_data_dir(env, tmp_path):
    data_dir = str(tmp_path / "d")
    serve = [RELAY, "--data-dir", data_dir, "serve", "--listen", "127.0.0.1:0"]
    first = subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.stdout.readline().startswith(b"agents: listening on 127.0.0.1:")
        second = run(env, *serve)
        assert second.returncode == 1
        assert second.stderr == (
            f"bridge-relay: another relay (pid {first.pid}) is serving the data dir "
            f"{tmp_path / 'd'}\n"
        )
    finally:
        first.terminate()
        assert first.wait(TIME_LIMIT) == 0
