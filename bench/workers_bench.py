# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench workers``: what ``bridge-relay serve --workers N`` costs, and how long a
SIGHUP upgrade takes.

The tunnel path of ``python -m bench tunnel`` (relay and agent as separate processes, TLS,
one forward per target) with ``--workers 1`` and ``--workers 2``, in alternating rounds. Each
round runs a fixed workload below saturation: CONNECTIONS new connections through the
forward to the echo server (CONCURRENCY at a time, one 32-byte round trip each), the same
new connections through the SOCKS port, then one stream sending to the sink for SECONDS.
The relay's CPU time (user + system, from ``/proc/PID/stat``, the parent and every worker)
over each part, divided by the connections or by the gigabytes carried, is the cost: what
the processes spend while nothing happens (timers, keepalives) is in it, as it is on a
real host; it is also shown on its own, per second idle, before the workload.

With two workers the agent's session is in one of them: the other, holding no session,
leaves the forward's and the SOCKS connections to it, so that neither needs a handover.
The last two parts spread the work over both workers: a second bridge, whose agent is on
the other worker (started again until it lands there), with a forward of its own. First
CONNECTIONS new connections split between the two forwards (two clients at once: each
worker serves its own bridge's, no handover), then as many SOCKS connections split between
the two bridges: the worker that accepts one for the other's bridge hands it over, about
half of them. With one worker both agents are in the one process. The handovers are
counted from the relay's ``/metrics``.

Then, with ``--workers 2``: SIGHUP, timed until the parent logs that every worker was
replaced (each new worker serves before the old one drains). Last, a rolling restart of
a two-node cluster (`bench.rolling`): how long each node takes to drain, exit, and have its
agent back.

On a machine with fewer cores than the processes involved (load, agent, relay), aggregate
rates cannot show scaling: the per-unit costs are what predict it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import report
from bench.clients import Failed, client
from bench.paths import BRIDGE, HOST, TunnelPath, console_script
from bench.procs import (
    Proc,
    StartError,
    clean_env,
    cpu_seconds,
    descendants,
    python_module,
    run_command,
)
from bench.rolling import rolling_restart

RELOAD_TIMEOUT = 120.0
IDLE_SECONDS = 3.0
#: The second bridge, whose agent should be on the other worker.
SECOND = "second"
PLACEMENT_ATTEMPTS = 12


class WorkersPath(TunnelPath):
    """The tunnel path with ``serve --workers N``; the relay role is the parent and its
    workers."""

    def __init__(self, workdir: Path, targets: dict[str, int], workers: int) -> None:
        workdir = workdir / f"workers-{workers}"
        workdir.mkdir(exist_ok=True)
        super().__init__(workdir, targets)
        self.workers = workers
        self.name = f"workers-{workers}"
        self.label = f"--workers {workers}"
        self.url = ""
        self.second: dict[str, str] = {}  # BRIDGE_ID, BRIDGE_SECRET of the second bridge

    def relay_args(self) -> list[str | Path]:
        second = f"{SECOND}={HOST}:{self.targets['echo']}"
        return ["--workers", str(self.workers), "--metrics", f"{HOST}:0", "--forward", second]

    def second_forward(self) -> int:
        """The port of the second bridge's forward to the echo server."""
        assert self.relay is not None
        return int(self.relay.wait_for(rf"^forward {SECOND} -> \S+: listening on \S+:(\d+)$")[1])

    def agent_url(self, agents: re.Match[str]) -> str:
        self.url = super().agent_url(agents)
        return self.url

    def relay_pids(self) -> list[int]:
        assert self.relay is not None
        return [self.relay.pid, *descendants(self.relay.pid)]

    def relay_cpu(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.relay_pids())

    def _create_bridge(self, relay_bin: str, data: Path, *store: str | Path) -> None:
        super()._create_bridge(relay_bin, data, *store)
        done = run_command(
            [relay_bin, "--data-dir", data, "bridges", "create", SECOND, "--bcrypt-cost", "4"]
        )
        if done.returncode:
            raise StartError(f"bridge-relay bridges create: {done.stderr.strip()}")
        self.second = dict(re.findall(r"^(BRIDGE_ID|BRIDGE_SECRET)=(\S+)$", done.stdout, re.M))

    def start_second_agent(self) -> None:
        """The second bridge's agent, on the worker without the first one's session (with
        one worker: in the one process). Raises StartError."""
        assert self.relay is not None
        first = self._holders().get(BRIDGE)
        for _ in range(PLACEMENT_ATTEMPTS):
            env = clean_env(
                BRIDGE_ID=self.second["BRIDGE_ID"],
                BRIDGE_SECRET=self.second["BRIDGE_SECRET"],
                RELAY_FINGERPRINT=self._bridge["RELAY_FINGERPRINT"],
                RELAY_URL=self.url,
                ALLOW=f"{HOST}:*",
            )
            agent = Proc("agent-second", [console_script("bridge-agent")], self.workdir, env=env)
            self._started.append(agent)
            agent.wait_for(r"Handling incoming proxy connections", stream="stderr")
            deadline = time.monotonic() + 30
            while (worker := self._holders().get(SECOND, -2)) == -2:
                if time.monotonic() > deadline:
                    raise StartError("the second agent is not connected")
                time.sleep(0.05)
            if self.workers == 1 or worker != first:
                return
            agent.stop()
            self._started.remove(agent)
        raise StartError(
            f"the second agent landed on the first one's worker {PLACEMENT_ATTEMPTS} times"
        )

    def _holders(self) -> dict[str, int]:
        """Bridge name -> the worker (-1: no worker) its last session connected to."""
        assert self.relay is not None
        holders = {}
        for match in re.finditer(r"\tBridge connected\t(\{.*\})$", self.relay.read("stderr"), re.M):
            fields = json.loads(match[1])
            holders[fields["bridge"]] = fields.get("worker", -1)
        return holders

    def handovers(self) -> int:
        """Connections handed from one worker to another so far (0 with one worker)."""
        assert self.relay is not None
        port = self.relay.wait_for(r"^metrics: listening on \S+:(\d+)$")[1]
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=30) as response:
            text = response.read().decode()
        pattern = r'^trio_bridge_handovers_total\{worker="\d+",direction="out"\} (\d+)$'
        return sum(int(m[1]) for m in re.finditer(pattern, text, re.M))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="alternating rounds, median reported (default 3)")
    add("--connections", type=int, default=3000, help="new connections per round (default 3000)")
    add("--concurrency", type=int, default=4, help="connections opened at once (default 4)")
    add("--seconds", type=float, default=3.0, help="length of the bulk send (default 3)")
    add(
        "--json",
        type=Path,
        default=report.RESULTS_DIR / "workers.json",
        help="where to write the results (default bench/results/workers.json)",
    )


def run(args: argparse.Namespace) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        report.progress("starting the echo server and the sink")
        servers = Proc("servers", python_module("bench.loadgen", "serve"), workdir)
        stack.callback(servers.stop)
        ports = json.loads(servers.wait_for(r"^\{.*\}$")[0])
        targets = {"echo": ports["echo"], "sink": ports["sink"]}
        paths = {n: WorkersPath(workdir, targets, n) for n in (1, 2)}
        results: dict[int, dict[str, list[float]]] = {n: {} for n in paths}
        for round_ in range(args.rounds):
            for n, path in paths.items():
                report.progress(f"round {round_ + 1}: {path.label}")
                path.start()
                try:
                    for key, value in _costs(path, args).items():
                        results[n].setdefault(key, []).append(value)
                finally:
                    path.stop()
        report.progress("SIGHUP upgrade with --workers 2")
        reload = _reload(paths[2])
        report.progress("rolling restart of a two-node cluster")
        rolling = rolling_restart(workdir)
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for n in paths:
        summary[f"workers_{n}"] = {k: report.median(v) for k, v in results[n].items()}
    one, two = summary["workers_1"], summary["workers_2"]
    for key, label in (
        ("idle_ms_per_s", "relay CPU while idle, ms per s (in the figures below)"),
        ("us_per_connection", "relay CPU per new connection (forward), µs"),
        ("us_per_socks_connection", "relay CPU per new connection (SOCKS), µs"),
        ("s_per_gb", "relay CPU per GB, s"),
        ("us_per_split_connection", "relay CPU per new connection (2 forwards, 2 bridges), µs"),
        ("us_per_split_socks_connection", "relay CPU per new connection (SOCKS, 2 bridges), µs"),
        ("mb_per_s", "bulk send, MB/s (context)"),
    ):
        ratio = f"{two[key] / one[key]:.2f}x" if one[key] else ""
        rows.append((label, f"{one[key]:,.1f}", f"{two[key]:,.1f}", ratio))
    for key, label in (
        ("socks_handed_over", "SOCKS connections handed over (one bridge)"),
        ("split_socks_handed_over", "SOCKS connections handed over (2 bridges)"),
    ):
        rows.append((label, f"{one[key]:.0%}", f"{two[key]:.0%}", ""))
    print(report.format_table(["", "--workers 1", "--workers 2", "2 / 1"], rows))
    print(
        f"SIGHUP upgrade, 2 workers replaced one at a time: {reload['seconds']:.2f} s "
        f"(the parent's own figure: {reload['logged']:.2f} s)"
    )
    for node, steps in rolling.items():
        print(
            f"rolling restart, node {node}: drained and exited in {steps['drain_s']:.2f} s, "
            f"started and its agent back in {steps['back_s']:.2f} s "
            f"({steps['total_s']:.2f} s in all)"
        )
    print(
        "rolling restart of the two-node cluster: "
        f"{sum(steps['total_s'] for steps in rolling.values()):.2f} s"
    )
    data = {
        "machine": report.machine(),
        "argv": args.argv,
        **summary,
        "reload": reload,
        "rolling": rolling,
    }
    print(f"results: {report.write_json(args.json, data)}")
    return 0


def _dial(port: int, args: argparse.Namespace, *more: object) -> int:
    """`args.connections` new connections through `port`: how many were served."""
    done = client(
        "dial",
        port,
        *more,
        "--count",
        args.connections,
        "--concurrency",
        args.concurrency,
        "--seconds",
        600,
        timeout=660,
    )
    return int(done["done"])


def _socks(path: WorkersPath, bridge: str) -> list[object]:
    return ["--socks", f"{HOST}.bridge-{bridge}", "--target-port", path.targets["echo"]]


def _costs(path: WorkersPath, args: argparse.Namespace) -> dict[str, float]:
    n = args.connections
    time.sleep(1.0)  # past the start-up
    idle_from = path.relay_cpu()
    time.sleep(IDLE_SECONDS)
    before = path.relay_cpu()
    if (done := _dial(path.ports["echo"], args)) != n:
        raise Failed(f"{done} of {n} connections served")
    middle = path.relay_cpu()
    handed = path.handovers()
    if (done := _dial(path.ports["socks"], args, *_socks(path, BRIDGE))) != n:
        raise Failed(f"{done} of {n} SOCKS connections served")
    socks_done = path.relay_cpu()
    socks_handed = path.handovers() - handed
    sent = client("send", path.ports["sink"], "--seconds", args.seconds, timeout=args.seconds + 120)
    after = path.relay_cpu()
    path.start_second_agent()
    forwards_split = _both(path, args, [path.ports["echo"]], [path.second_forward()])
    socks_split = _both(
        path,
        args,
        [path.ports["socks"], *_socks(path, BRIDGE)],
        [path.ports["socks"], *_socks(path, SECOND)],
    )
    return {
        "idle_ms_per_s": (before - idle_from) / IDLE_SECONDS * 1e3,
        "us_per_connection": (middle - before) / n * 1e6,
        "us_per_socks_connection": (socks_done - middle) / n * 1e6,
        "socks_handed_over": socks_handed / n,
        "s_per_gb": (after - socks_done) / (sent["bytes"] / 1e9),
        "mb_per_s": sent["mbps"],
        "us_per_split_connection": forwards_split[0],
        "us_per_split_socks_connection": socks_split[0],
        "split_socks_handed_over": socks_split[1],
    }


def _both(
    path: WorkersPath, args: argparse.Namespace, first: list[object], second: list[object]
) -> tuple[float, float]:
    """Half the connections through `first` (a port and dial options), half through
    `second`, the two clients at once: relay CPU per connection (µs), and the share of them
    handed over."""
    n = args.connections // 2
    half = argparse.Namespace(connections=n, concurrency=args.concurrency // 2 or 1)
    handed = path.handovers()
    before = path.relay_cpu()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_dial, port, half, *more) for port, *more in (first, second)]
        done = sum(future.result() for future in futures)
    cpu = path.relay_cpu() - before
    if done != 2 * n:
        raise Failed(f"{done} of {2 * n} connections (two bridges) served")
    return cpu / done * 1e6, (path.handovers() - handed) / done


def _reload(path: WorkersPath) -> dict[str, float]:
    path.start()
    try:
        assert path.relay is not None
        path.relay.wait_for(r"\tWorkers serving\t", stream="stderr")
        started = time.monotonic()
        offset = path.relay.size("stderr")
        os.kill(path.relay.pid, signal.SIGHUP)
        deadline = started + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            text = path.relay.read("stderr", offset)
            if match := re.search(r"\tReloaded: every worker replaced\t(\{.*\})", text):
                return {
                    "seconds": time.monotonic() - started,
                    "logged": json.loads(match[1])["duration"],
                }
            time.sleep(0.02)
        raise Failed(f"no reload within {RELOAD_TIMEOUT:g} s")
    finally:
        path.stop()
