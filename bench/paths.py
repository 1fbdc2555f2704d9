# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The paths ``python -m bench tunnel`` compares, each from 127.0.0.1 to the same targets.

A path maps each target name to the local port that reaches it, and names the processes that
carry its connections (their memory is measured). `start` may be called again after `stop`;
`stop` is idempotent and stops everything the path started.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import time
from pathlib import Path

from bench.procs import Proc, StartError, clean_env, rss_kib, run_command
from bridge.ops.errors import os_reason

HOST = "127.0.0.1"
BRIDGE = "bench"


class SkipPath(Exception):
    """The path cannot run on this machine; the message says why."""


class BenchPath:
    name = ""
    label = ""
    #: Whether a client's EOF reaches the target with the other direction still open (the
    #: built-in sink answers the sender's EOF: a path without it is measured with iperf3).
    half_close = True

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        self.workdir = workdir
        self.targets = targets
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.ports = dict(self.targets)

    def stop(self) -> None:
        pass

    def processes(self) -> dict[str, list[int]]:
        """Role -> pids of the processes that carry this path's connections."""
        return {}

    def procs(self) -> dict[str, Proc]:
        """Role -> the started processes whose logs say what went wrong."""
        return {}

    def rss(self) -> dict[str, int]:
        """Role -> resident memory in KiB, summed over the role's processes."""
        return {
            role: sum(rss_kib(pid) or 0 for pid in pids) for role, pids in self.processes().items()
        }


class DirectPath(BenchPath):
    name, label = "direct", "direct"


def echo_ready(port: int, alive, timeout: float = 30.0) -> None:
    """Wait until one byte comes back through `port` (the path is up end to end)."""
    deadline = time.monotonic() + timeout
    error = "no attempt"
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                sock.sendall(b"?")
                if sock.recv(1) == b"?":
                    return
                error = "the connection closed without a reply"
        except OSError as exc:
            error = os_reason(exc)
        time.sleep(0.1)
    raise StartError(f"no echo through port {port}: {error}")


def console_script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SkipPath(f"{name} not found: install the project (pip install -e .)")
    return found


class TunnelPath(BenchPath):
    """bridge-relay and bridge-agent as a user runs them: TLS, the relay's self-signed
    certificate pinned by the agent, default settings, one forward per target, and the SOCKS5
    front door (its port is ``ports["socks"]``)."""

    name, label = "tunnel", "tunnel"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        super().__init__(workdir, targets)
        self.relay: Proc | None = None
        self.agent: Proc | None = None
        self._bridge: dict[str, str] = {}  # BRIDGE_ID, BRIDGE_SECRET, RELAY_FINGERPRINT
        self._started: list[Proc] = []  # what stop() stops, in reverse

    def relay_args(self) -> list[str | Path]:
        """More `serve` arguments (a subclass's variant of the path)."""
        return []

    def agent_url(self, agents: re.Match[str]) -> str:
        """The agent's RELAY_URL, from the relay's "agents: listening on HOST:PORT" line."""
        return f"tls://{HOST}:{agents[2]}"

    def _create_bridge(self, relay_bin: str, data: Path, *store: str | Path) -> None:
        """A data dir with one bridge (made once: restarts reuse it); `store`: options before
        the subcommand (``--store URL``)."""

        def relay_cli(*args: str) -> str:
            done = run_command([relay_bin, "--data-dir", data, *store, *args])
            if done.returncode:
                raise StartError(
                    f"bridge-relay {args[0]}: {done.stderr.strip() or done.stdout.strip()}"
                )
            return done.stdout

        created = relay_cli("bridges", "create", BRIDGE, "--bcrypt-cost", "4")
        self._bridge = dict(re.findall(r"^(BRIDGE_ID|BRIDGE_SECRET)=(\S+)$", created, re.M))
        self._bridge["RELAY_FINGERPRINT"] = relay_cli("fingerprint").strip()

    def _start_relay(
        self, name: str, data: Path, args: list[str | Path], *, forwards: bool = True
    ) -> tuple[Proc, re.Match[str]]:
        """`bridge-relay serve` on `data` with `args`; with `forwards`, one forward per target
        and the SOCKS front door (their ports go to `ports`). Returns the process and its
        "agents: listening on HOST:PORT" line. Raises StartError (`stop` stops the process)."""
        served = [
            arg
            for port in self.targets.values()
            for arg in ("--forward", f"{BRIDGE}={HOST}:{port}")
        ]
        served += ["--socks", f"{HOST}:0"]
        relay = Proc(
            name,
            [
                console_script("bridge-relay"),
                "--data-dir",
                data,
                "serve",
                "--listen",
                f"{HOST}:0",
                *(served if forwards else []),
                *args,
            ],
            self.workdir,
        )
        self._started.append(relay)
        agents = relay.wait_for(r"^agents: listening on (\S+):(\d+)$")
        if forwards:
            for target, port in self.targets.items():
                match = relay.wait_for(
                    rf"^forward {BRIDGE} -> {re.escape(HOST)}:{port}: listening on \S+:(\d+)$"
                )
                self.ports[target] = int(match[1])
            self.ports["socks"] = int(relay.wait_for(r"^socks: listening on \S+:(\d+)$")[1])
        return relay, agents

    def _start_agent(self, url: str) -> None:
        """`bridge-agent` of the bench bridge, to `url`, allowing every port of 127.0.0.1;
        returns once it handles connections."""
        env = clean_env(**self._bridge, RELAY_URL=url, ALLOW=f"{HOST}:*")
        self.agent = Proc("agent", [console_script("bridge-agent")], self.workdir, env=env)
        self._started.append(self.agent)
        self.agent.wait_for(r"Handling incoming proxy connections", stream="stderr")

    def start(self) -> None:
        relay_bin = console_script("bridge-relay")
        console_script("bridge-agent")
        data = self.workdir / "relay-data"
        if not self._bridge:
            self._create_bridge(relay_bin, data)
        try:
            self.relay, agents = self._start_relay("relay", data, self.relay_args())
            self._start_agent(self.agent_url(agents))
            echo_ready(self.ports["echo"], lambda: self.relay.alive() and self.agent.alive())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self._started:
            self._started.pop().stop()

    def processes(self) -> dict[str, list[int]]:
        return {role: [proc.pid] for role, proc in self.procs().items() if proc.alive()}

    def procs(self) -> dict[str, Proc]:
        return {role: proc for role, proc in (("relay", self.relay), ("agent", self.agent)) if proc}


class AuditedTunnelPath(TunnelPath):
    """The tunnel path with the relay writing its audit log (`serve --audit-log`): run it
    beside `tunnel` to see what auditing costs."""

    name, label = "tunnel-audit", "tunnel, audit log on"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        workdir = workdir / self.name  # a data dir of its own
        workdir.mkdir(exist_ok=True)
        super().__init__(workdir, targets)

    def relay_args(self) -> list[str | Path]:
        return ["--audit-log", self.workdir / "audit.jsonl"]


class WebSocketTunnelPath(TunnelPath):
    """The tunnel path with the agent connecting over WebSocket (`serve --listen-ws`,
    ``RELAY_URL=wss://...``): run it beside `tunnel` to compare the two transports."""

    name, label = "tunnel-ws", "tunnel, wss://"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        workdir = workdir / self.name  # a data dir of its own
        workdir.mkdir(exist_ok=True)
        super().__init__(workdir, targets)

    def relay_args(self) -> list[str | Path]:
        return ["--listen-ws", f"{HOST}:0"]

    def agent_url(self, agents: re.Match[str]) -> str:
        assert self.relay is not None
        ws = self.relay.wait_for(r"^agents \(WebSocket\): listening on (\S+):(\d+), path (\S+)$")
        return f"wss://{HOST}:{ws[2]}{ws[3]}"


class PeeredTunnelPath(TunnelPath):
    """Two relay nodes of a cluster and one peer hop: `bridge-relay serve --peer-listen` twice,
    sharing one store, the agent connected to relay A, the forwards and the SOCKS front door
    on relay B. Every connection enters relay B, crosses the peer link to relay A and goes on
    to the agent. The store is one SQLite file (``--store sqlite:///...``), as the tunnel
    path's is, so that the hop is the only difference between the two paths (a PostgreSQL
    store would also have the relays write the audit table)."""

    name, label = "peered", "peered"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        workdir = workdir / self.name  # data dirs and a store of its own
        workdir.mkdir(exist_ok=True)
        super().__init__(workdir, targets)
        self.agents_relay: Proc | None = None

    def _node(self, name: str) -> list[str | Path]:
        return [
            "--store",
            f"sqlite:///{self.workdir / 'store.sqlite'}",
            "--node",
            name,
            "--peer-listen",
            f"{HOST}:0",
        ]

    def start(self) -> None:
        relay_bin = console_script("bridge-relay")
        console_script("bridge-agent")
        data = {node: self.workdir / f"relay-{node}" for node in "ab"}
        if not self._bridge:
            self._create_bridge(relay_bin, data["a"], "--store", self._node("a")[1])
        try:
            self.agents_relay, agents = self._start_relay(
                "relay-a", data["a"], self._node("a"), forwards=False
            )
            self.relay, _ = self._start_relay("relay-b", data["b"], self._node("b"))
            for relay in (self.agents_relay, self.relay):
                relay.wait_for(r"\tPeer link up\t", stream="stderr")
            self._start_agent(self.agent_url(agents))
            echo_ready(
                self.ports["echo"],
                lambda: all(p.alive() for p in (self.agents_relay, self.relay, self.agent)),
            )
        except BaseException:
            self.stop()
            raise

    def procs(self) -> dict[str, Proc]:
        found = (("relay B", self.relay), ("relay A", self.agents_relay), ("agent", self.agent))
        return {role: proc for role, proc in found if proc}
