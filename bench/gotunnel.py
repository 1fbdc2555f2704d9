# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The Go reference tunnel of ``python -m bench tunnel``: bench/gotunnel/main.go, a relay and
an agent on hashicorp/yamux over TLS as two processes (``go``), or with a hop between them
as three (``go-peered``), built at run time from Debian's golang-github-hashicorp-yamux-dev
(GOPATH=/usr/share/gocode, GO111MODULE=off).

The yamux of that package has no half-close (a stream's Close ends its reads too), so a
client's EOF ends the tunneled connection both ways: the built-in sink, which answers EOF,
cannot be measured through it (iperf3 can).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench.paths import HOST, BenchPath, SkipPath, echo_ready
from bench.procs import Proc, clean_env, run_command

GOPATH = Path("/usr/share/gocode")
YAMUX_SOURCE = GOPATH / "src/github.com/hashicorp/yamux"
SOURCE = Path(__file__).resolve().parent / "gotunnel"
BUILD_TIMEOUT = 300.0


class BuildError(Exception):
    """A Go program could not be built; the message says why."""


def go_build(source: Path, output: Path, cache: Path) -> Path:
    """Build the Go program in `source` (package main, GOPATH mode against the Debian Go
    packages) to `output`, with its build cache in `cache`. Raises BuildError saying what is
    missing or what the compiler said."""
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain is missing (Debian package golang-go)")
    if not (YAMUX_SOURCE / "session.go").is_file():
        raise BuildError(
            f"hashicorp/yamux is missing from {YAMUX_SOURCE} "
            "(Debian package golang-github-hashicorp-yamux-dev)"
        )
    env = clean_env(GOPATH=str(GOPATH), GO111MODULE="off", GOCACHE=str(cache), GOFLAGS="")
    done = run_command([go, "build", "-o", output, "."], cwd=source, env=env, timeout=BUILD_TIMEOUT)
    if done.returncode:
        raise BuildError(f"go build in {source}: {done.stderr.strip() or done.stdout.strip()}")
    return output


class GoTunnelPath(BenchPath):
    """gotunnel relay and gotunnel agent: TLS with the relay's self-signed certificate
    verified by the agent, default yamux settings, one forward per target."""

    name, label = "go", "Go yamux"
    half_close = False

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        super().__init__(workdir, targets)
        self.dir = workdir / "go"  # the build, shared by the Go paths
        self.certs = workdir / self.name
        self.relay_cert = self.certs / "relay.pem"
        self.binary: Path | None = None
        self.relay: Proc | None = None
        self.agent: Proc | None = None

    def _build(self) -> Path:
        if self.binary is None:
            self.dir.mkdir(exist_ok=True)
            try:
                self.binary = go_build(SOURCE, self.dir / "gotunnel", self.dir / "cache")
            except BuildError as exc:
                raise SkipPath(str(exc)) from None
        return self.binary

    def _start_relay(self) -> re.Match[str]:
        """Start gotunnel relay with a forward per target; its agents' listening address."""
        self.certs.mkdir(exist_ok=True)
        forwards = [arg for port in self.targets.values() for arg in ("-forward", f"{HOST}:{port}")]
        self.relay = Proc(
            "go-relay",
            [self._build(), "relay", "-cert-out", self.relay_cert, *forwards],
            self.workdir,
        )
        agents = self.relay.wait_for(r"^agents: listening on (\S+)$")
        for name, port in self.targets.items():
            match = self.relay.wait_for(rf"^forward {HOST}:{port}: listening on \S+:(\d+)$")
            self.ports[name] = int(match[1])
        return agents

    def _start_agent(self, address: str, cert: Path) -> None:
        """Start gotunnel agent against `address`, whose certificate is `cert`; returns once
        it is connected."""
        self.agent = Proc(
            "go-agent", [self._build(), "agent", "-relay", address, "-ca", cert], self.workdir
        )
        self.agent.wait_for(r"^agent: connected$")

    def _ready(self) -> None:
        echo_ready(self.ports["echo"], lambda: all(p.alive() for p in self.procs().values()))

    def start(self) -> None:
        try:
            agents = self._start_relay()
            self._start_agent(agents[1], self.relay_cert)
            self._ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the processes, the agent's end first."""
        for proc in reversed(self.procs().values()):
            proc.stop()

    def processes(self) -> dict[str, list[int]]:
        return {role: [proc.pid] for role, proc in self.procs().items() if proc.alive()}

    def procs(self) -> dict[str, Proc]:
        return {role: proc for role, proc in (("relay", self.relay), ("agent", self.agent)) if proc}


class GoPeeredPath(GoTunnelPath):
    """The Go tunnel with one peer hop, the reference for the relay's peered path: gotunnel
    relay holds the forwards (relay B), gotunnel hop holds the agent's session (relay A) and
    dials relay B as its agent, copying each stream relay B opens to a stream to the agent.
    Each link is TLS verified by the dialing side (the peered path's links are mutually
    authenticated: the difference is in the handshakes, outside the measured workloads)."""

    name, label = "go-peered", "Go yamux, peered"

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        super().__init__(workdir, targets)
        self.hop: Proc | None = None

    def start(self) -> None:
        hop_cert = self.certs / "hop.pem"
        try:
            agents = self._start_relay()
            self.hop = Proc(
                "go-hop",
                [
                    self._build(),
                    "hop",
                    "-cert-out",
                    hop_cert,
                    "-relay",
                    agents[1],
                    "-ca",
                    self.relay_cert,
                ],
                self.workdir,
            )
            hop_agents = self.hop.wait_for(r"^agents: listening on (\S+)$")
            self._start_agent(hop_agents[1], hop_cert)
            self.hop.wait_for(r"^hop: connected$")
            self._ready()
        except BaseException:
            self.stop()
            raise

    def procs(self) -> dict[str, Proc]:
        found = (("relay B", self.relay), ("relay A", self.hop), ("agent", self.agent))
        return {role: proc for role, proc in found if proc}
