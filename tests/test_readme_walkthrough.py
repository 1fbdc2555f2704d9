# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The README followed to the letter: its Quickstart and production steps, run with real
processes, the same commands and the same env file, so that the README cannot drift from the
code or from the systemd units.

The shell blocks marked ``<!-- walkthrough: NAME -->`` run in bash, each block as one
script, with only these differences, all listed here:

- the README's example names become local ones (`SUBSTITUTIONS`): the database
  ``db.internal:5432`` is an echo server, ``relay.example.com`` and the forward's port 15432
  are free ports of 127.0.0.1, and the relay listens there through ``RELAY_LISTEN`` (the
  environment, not the command);
- for the production steps, ``/etc/`` is a directory of the test and ``/opt/trio-bridge`` is
  the virtual environment running the tests (installing it again would only test pip);
  ``systemctl``, ``useradd`` and ``sudo`` lines are not run (no service manager here): the test
  does what systemd would do with the installed unit instead, and has ``systemd-analyze
  verify`` check it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = Path(sys.prefix)
TIME_LIMIT = 30


def walkthrough(name: str) -> list[str]:
    """The command lines of the README's shell block marked for the walkthrough as ``name``."""
    text = README.read_text()
    marker = f"<!-- walkthrough: {name} -->\n```sh\n"
    start = text.index(marker) + len(marker)
    block = text[start : text.index("```", start)]
    return [line for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def substituted(line: str, substitutions: dict[str, str]) -> str:
    for literal, value in substitutions.items():
        line = line.replace(literal, value)
    return line


def shell_env(**extra: str) -> dict[str, str]:
    """A clean environment: the venv's commands first on the PATH, none of our settings."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "BRIDGE_"))}
    keep = {k: v for k, v in keep.items() if k not in ("ALLOW", "ALLOWED_HOSTS", "LOG_LEVEL")}
    return {**keep, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", **extra}


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def read_until(stream, pattern: str, seen: bytearray) -> re.Match[str]:
    while (match := re.search(pattern, seen.decode(errors="replace"))) is None:
        data = await stream.receive_some()
        assert data, f"ended before {pattern!r}:\n{seen.decode(errors='replace')}"
        seen += data
    return match


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads them (comments, quotes)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("\"'")
    return values


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


async def start_script(lines: list[str], cwd: Path, env: dict[str, str]) -> trio.Process:
    script = "set -e\n" + "\n".join(lines) + "\n"
    return await trio.lowlevel.open_process(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop(process: trio.Process) -> None:
    if process.returncode is None:
        os.killpg(process.pid, signal.SIGTERM)


async def test_the_readme_walkthrough(tmp_path, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    db_port = listeners[0].socket.getsockname()[1]
    relay_port, forward_port = free_port(), free_port()
    substitutions = {
        "db.internal:5432": f"127.0.0.1:{db_port}",
        "127.0.0.1:15432": f"127.0.0.1:{forward_port}",
        "tls://relay.example.com": f"tls://127.0.0.1:{relay_port}",
    }
    env = shell_env(RELAY_LISTEN=f"127.0.0.1:{relay_port}", RELAY_BCRYPT_COST="4")
    processes: list[trio.Process] = []
    try:
        with trio.fail_after(TIME_LIMIT):
            # Quickstart, on the relay host.
            relay_lines = [substituted(line, substitutions) for line in walkthrough("relay")]
            relay = await start_script(relay_lines, tmp_path, env)
            processes.append(relay)
            relay_out = bytearray()
            await read_until(
                relay.stdout,
                rf"forward prod-vpc -> .*: listening on 127\.0\.0\.1:{forward_port}\n",
                relay_out,
            )
            agent_env = parse_env_file(tmp_path / "agent.env")
            assert set(agent_env) == {"BRIDGE_ID", "BRIDGE_SECRET", "RELAY_FINGERPRINT"}
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", agent_env["RELAY_FINGERPRINT"])

            # Quickstart, inside the private network: the same env file.
            agent_lines = [substituted(line, substitutions) for line in walkthrough("agent")]
            agent = await start_script(agent_lines, tmp_path, shell_env())
            processes.append(agent)
            await read_until(agent.stderr, r"\tHandling incoming proxy connections\n", bytearray())

            check = [substituted(line, substitutions) for line in walkthrough("check")]
            result = await trio.run_process(
                ["bash", "-ec", "\n".join(check)], cwd=tmp_path, env=env, capture_stdout=True
            )
            target = f"127.0.0.1:{db_port}"
            assert result.stdout.decode() == f"OK: prod-vpc reached {target} via {target}\n"
            client = await trio.open_tcp_stream("127.0.0.1", forward_port)
            async with client:
                await client.send_all(b"SELECT 1")
                assert await client.receive_some() == b"SELECT 1"

            # Running in production: the agent's unit with the same env file.
            await _agent_under_systemd(tmp_path, substitutions)
            _relay_unit_agrees(tmp_path)
    finally:
        for process in processes:
            stop(process)


def production_substitutions(root: Path) -> dict[str, str]:
    return {"/etc/": f"{root}/etc/", "/opt/trio-bridge": str(VENV)}


def _run_production_lines(lines: list[str], tmp_path: Path, root: Path) -> list[str]:
    """Run the lines a test can run; returns those left to systemd (or to an administrator)."""
    (tmp_path / "packaging").symlink_to(ROOT / "packaging")
    left = []
    for line in lines:
        if line.startswith(("systemctl ", "useradd ", "sudo ", "python3 -m venv /opt/")):
            left.append(line)
            continue
        command = substituted(line, production_substitutions(root))
        subprocess.run(["bash", "-ec", command], cwd=tmp_path, check=True, timeout=TIME_LIMIT)
    (tmp_path / "packaging").unlink()
    return left


async def _agent_under_systemd(tmp_path: Path, substitutions: dict[str, str]) -> None:
    root = tmp_path / "root"
    left = _run_production_lines(walkthrough("agent-systemd"), tmp_path, root)
    assert left == [
        "python3 -m venv /opt/trio-bridge && /opt/trio-bridge/bin/pip install -q .",
        "systemctl daemon-reload && systemctl enable --now bridge-agent",
    ]
    unit_path = root / "etc/systemd/system/bridge-agent.service"
    unit = unit_settings(unit_path)
    # The unit reads the env file where the README installed it, runs the command the README
    # installed, and its hardening lets it: the venv is not under a home directory.
    (env_file,) = unit["EnvironmentFile"]
    assert env_file == "/etc/bridge-agent/agent.env"
    installed = root / env_file.removeprefix("/")
    assert installed.stat().st_mode & 0o777 == 0o600
    assert parse_env_file(installed) == parse_env_file(tmp_path / "agent.env")
    (exec_start,) = unit["ExecStart"]
    assert exec_start == "/opt/trio-bridge/bin/bridge-agent"
    assert unit["ProtectHome"] == ["yes"] and not exec_start.startswith(("/home/", "/root/"))
    assert unit["Type"] == ["notify"] and unit["RestartPreventExitStatus"] == ["2 78"]
    # The settings the README lists for agent.env are the ones the unit's comment lists.
    comment = unit_path.read_text().split("[Unit]")[0]
    for name in ["BRIDGE_ID", "BRIDGE_SECRET", "RELAY_URL", "RELAY_FINGERPRINT", "ALLOW"]:
        assert name in comment, name
    _systemd_analyze_verify(unit_path, root)

    # What `systemctl enable --now` does: ExecStart with the env file, until READY=1.
    command = substituted(exec_start, production_substitutions(root))
    environment = {
        "PATH": "/usr/bin:/bin",
        **dict(e.split("=", 1) for e in unit.get("Environment", [])),
        **parse_env_file(installed),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
    }
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        await notify.bind(str(tmp_path / "notify"))
        process = await trio.lowlevel.open_process(
            [command], env=environment, stderr=subprocess.DEVNULL
        )
        try:
            messages = []
            while not any(m.startswith("READY=1") for m in messages):
                messages.append((await notify.recv(4096)).decode())
        finally:
            process.terminate()
            assert await process.wait() == 0  # drained, as on `systemctl stop`


def _relay_unit_agrees(tmp_path: Path) -> None:
    root = tmp_path / "root"
    left = _run_production_lines(walkthrough("relay-systemd"), tmp_path, root)
    assert [line.split()[0] for line in left] == ["useradd", "systemctl", "sudo"]
    unit_path = root / "etc/systemd/system/bridge-relay.service"
    unit = unit_settings(unit_path)
    useradd, _, sudo = left
    user = useradd.split()[-1]
    assert unit["User"] == [user] and sudo.startswith(f"sudo -u {user} ")
    assert unit["EnvironmentFile"] == ["-/etc/bridge-relay/relay.env"]
    assert (root / "etc/bridge-relay/relay.env").exists()
    (exec_start,) = unit["ExecStart"]
    assert exec_start == "/opt/trio-bridge/bin/bridge-relay serve"
    assert sudo.split()[3] == "/opt/trio-bridge/bin/bridge-relay"
    # The data dir the administrative command uses is the unit's state directory.
    assert "--data-dir /var/lib/bridge-relay " in sudo
    assert unit["StateDirectory"] == ["bridge-relay"]
    assert unit["Environment"].count("RELAY_DATA_DIR=%S/bridge-relay") == 1
    _systemd_analyze_verify(unit_path, root)


def _systemd_analyze_verify(unit_path: Path, root: Path) -> None:
    """systemd's own check of the unit, its command pointing at the venv that runs the tests."""
    text = substituted(unit_path.read_text(), {"/opt/trio-bridge": str(VENV)})
    checked = root / "verify" / unit_path.name
    checked.parent.mkdir(exist_ok=True)
    checked.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(checked)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
    )
    assert result.returncode == 0, result.stderr
    assert unit_path.name not in result.stderr, result.stderr


async def test_the_readme_cluster_walkthrough(tmp_path, nursery, postgres_url):
    """ "Two nodes and a PostgreSQL on one machine": the store is a database of the test's
    PostgreSQL server, the database behind the agent an echo server, the ports free ones."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    db_port = listeners[0].socket.getsockname()[1]
    forward_port = free_port()
    substitutions = {
        "postgresql://relay@localhost/relay": postgres_url,
        "db.internal:5432": f"127.0.0.1:{db_port}",
        "127.0.0.1:15432": f"127.0.0.1:{forward_port}",
        **{f"127.0.0.1:{port}": f"127.0.0.1:{free_port()}" for port in (4001, 4002, 4101, 4102)},
    }

    def block(name: str) -> list[str]:
        return [substituted(line, substitutions) for line in walkthrough(name)]

    env = shell_env(RELAY_BCRYPT_COST="4")
    processes: list[trio.Process] = []
    try:
        with trio.fail_after(TIME_LIMIT):
            node1 = await start_script(block("cluster-node1"), tmp_path, env)
            processes.append(node1)
            await read_until(node1.stdout, r"peers: listening on 127\.0\.0\.1:\d+\n", bytearray())
            node2 = await start_script(block("cluster-node2"), tmp_path, env)
            processes.append(node2)
            await read_until(
                node2.stdout,
                rf"forward prod-vpc -> .*: listening on 127\.0\.0\.1:{forward_port}\n",
                bytearray(),
            )
            await read_until(node2.stderr, r'\tPeer link up\t.*"node1"', bytearray())
            agent = await start_script(block("cluster-agent"), tmp_path, shell_env())
            processes.append(agent)
            await read_until(agent.stderr, r"\tHandling incoming proxy connections\n", bytearray())

            # Both nodes reach the bridge once the one without its session heard of it.
            check = "\n".join(block("cluster-check"))
            while True:
                result = await trio.run_process(
                    ["bash", "-ec", check], cwd=tmp_path, env=env, capture_stdout=True, check=False
                )
                if result.returncode == 0:
                    break
                await trio.sleep(0.2)
            lines = result.stdout.decode().splitlines()
            nodes = [row.split() for row in lines[1:3]]
            assert [(row[0], "alive" in row) for row in nodes] == [("node1", True), ("node2", True)]
            target = f"127.0.0.1:{db_port}"
            assert lines[3:] == [f"OK: prod-vpc reached {target} via {target}"] * 2
            client = await trio.open_tcp_stream("127.0.0.1", forward_port)
            async with client:
                await client.send_all(b"SELECT 1")
                assert await client.receive_some() == b"SELECT 1"
    finally:
        for process in processes:
            stop(process)
