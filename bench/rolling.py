# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""How long a rolling restart of a cluster takes: two relay nodes sharing one store, linked
by their peer listeners, and one agent with a session to each (``--connections 2``, both
nodes in its RELAY_URL). Each node in turn gets SIGTERM, drains (its agent is told to move),
leaves the cluster and exits, and is started again on the same ports; the next node is
restarted once the agent is back on it. Timed per node: from SIGTERM to the exit (the drain),
from the start to the agent's session on it (back), and the whole.

Nothing flows through the nodes meanwhile: that no connection fails during such a restart
is what ``tests/faults/test_rolling_restart.py`` checks, under load; this measures only the
time an operator waits. ``python -m bench rolling`` (median of --rounds fresh clusters);
``python -m bench workers`` ends with one.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from bench import report
from bench.clients import Failed
from bench.paths import HOST, PeeredTunnelPath, console_script
from bench.procs import Proc, StartError, free_port, run_command

#: How long one node may take to drain and exit, or to come back.
STEP_TIMEOUT = 60.0
NODES = ("a", "b")


class RollingCluster(PeeredTunnelPath):
    """Two nodes on fixed ports (a restarted node is where the agent's URL says) and an
    agent keeping a session to each; no forwards."""

    name, label = "rolling", "rolling restart"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, {})
        self.ports_of = {node: (free_port(), free_port()) for node in NODES}
        self.nodes: dict[str, Proc] = {}
        self.data = {node: self.workdir / f"relay-{node}" for node in NODES}

    def _node_args(self, node: str) -> list[str | Path]:
        agents, peers = self.ports_of[node]
        args = self._node(node)
        args[args.index("--peer-listen") + 1] = f"{HOST}:{peers}"
        return [*args, "--listen", f"{HOST}:{agents}"]

    def start_node(self, node: str) -> Proc:
        """`bridge-relay serve` of `node`, returned once it listens for agents."""
        proc, _ = self._start_relay(
            f"relay-{node}", self.data[node], self._node_args(node), forwards=False
        )
        self.nodes[node] = proc
        return proc

    def start(self) -> None:
        relay_bin = console_script("bridge-relay")
        console_script("bridge-agent")
        self._create_bridge(relay_bin, self.data["a"], "--store", self._node("a")[1])
        try:
            for node in NODES:
                self.start_node(node)
            fingerprints = [self._bridge["RELAY_FINGERPRINT"]]
            done = run_command([relay_bin, "--data-dir", self.data["b"], "fingerprint"])
            if done.returncode:
                raise StartError(f"bridge-relay fingerprint: {done.stderr.strip()}")
            fingerprints.append(done.stdout.strip())
            self._bridge["RELAY_FINGERPRINT"] = ",".join(fingerprints)
            for node in NODES:
                self.nodes[node].wait_for(r"\tPeer link up\t", stream="stderr")
            urls = ",".join(f"tls://{HOST}:{self.ports_of[n][0]}" for n in NODES)
            self._start_agent(urls)
            for node in NODES:
                self.nodes[node].wait_for(r"\tBridge connected\t", stream="stderr")
        except BaseException:
            self.stop()
            raise

    def restart(self, node: str) -> dict[str, float]:
        """SIGTERM `node`, wait for its exit (status 0), start it again and wait for the
        agent's session on it. Raises `Failed` on a non-zero exit or a step over
        STEP_TIMEOUT."""
        proc = self.nodes[node]
        began = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.popen.wait(STEP_TIMEOUT)
        drained = time.monotonic()
        if status != 0:
            raise Failed(f"node {node} exited with status {status}: {proc.tail()}")
        started = time.monotonic()
        fresh = self.start_node(node)
        fresh.wait_for(r"\tBridge connected\t", stream="stderr", timeout=STEP_TIMEOUT)
        back = time.monotonic()
        return {
            "drain_s": drained - began,
            "back_s": back - started,
            "total_s": back - began,
        }


def rolling_restart(workdir: Path) -> dict[str, dict[str, float]]:
    """Restart each node of a fresh two-node cluster in turn; the seconds of each step, by
    node (see the module's docstring). Raises `Failed` or StartError."""
    cluster = RollingCluster(workdir)
    cluster.start()
    try:
        return {node: cluster.restart(node) for node in NODES}
    finally:
        cluster.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="fresh clusters restarted, median (default 3)")
    add(
        "--json",
        type=Path,
        default=report.RESULTS_DIR / "rolling.json",
        help="where to write the results (default bench/results/rolling.json)",
    )


def run(args: argparse.Namespace) -> int:
    runs = []
    for round_ in range(args.rounds):
        report.progress(f"round {round_ + 1}: a two-node cluster, each node restarted in turn")
        with tempfile.TemporaryDirectory(prefix="bench-rolling-") as tmp:
            runs.append(rolling_restart(Path(tmp)))
    rows = []
    for node in NODES:
        medians = {key: report.median([r[node][key] for r in runs]) for key in runs[0][node]}
        rows.append((node, *(f"{medians[k]:.2f}" for k in ("drain_s", "back_s", "total_s"))))
    whole = report.median([sum(steps["total_s"] for steps in r.values()) for r in runs])
    print(
        report.format_table(
            ["node", "SIGTERM to exit, s", "start to agent back, s", "in all, s"], rows
        )
    )
    print(f"rolling restart of the two-node cluster: {whole:.2f} s (median of {len(runs)})")
    data = {"machine": report.machine(), "argv": args.argv, "runs": runs, "median_s": whole}
    print(f"results: {report.write_json(args.json, data)}")
    return 0
