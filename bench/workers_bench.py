# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench workers``: what ``bridge-relay serve --workers N`` costs, and how long a
SIGHUP upgrade takes.

The tunnel path of ``python -m bench tunnel`` (relay and agent as separate processes, TLS,
one forward per target) with ``--workers 1`` and ``--workers 2``, in alternating rounds. Each
round runs a fixed workload below saturation: CONNECTIONS new connections through the
forward to the echo server (CONCURRENCY at a time, one 32-byte round trip each), then one
stream sending to the sink for SECONDS, and the same new connections through the SOCKS
port. The relay's CPU time (user + system, from
``/proc/PID/stat``, the parent and every worker) over each part, divided by the connections
or by the gigabytes carried, is the cost. With two workers the agent's session is in one
of them: the other leaves the forward's connections to it, but accepts about half of the
SOCKS connections (their bridge is known only after the request) and hands them over.

Then, with ``--workers 2``: SIGHUP, timed until the parent logs that every worker was
replaced (each new worker serves before the old one drains).

On a machine with fewer cores than the processes involved (load, agent, relay), aggregate
rates cannot show scaling: the per-unit costs are what predict it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from bench import report
from bench.clients import Failed, client
from bench.paths import BRIDGE, HOST, TunnelPath
from bench.procs import Proc, cpu_seconds, descendants, python_module

RELOAD_TIMEOUT = 120.0


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

    def relay_args(self) -> list[str | Path]:
        return ["--workers", str(self.workers)]

    def relay_pids(self) -> list[int]:
        assert self.relay is not None
        return [self.relay.pid, *descendants(self.relay.pid)]

    def relay_cpu(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.relay_pids())


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
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for n in paths:
        summary[f"workers_{n}"] = {k: report.median(v) for k, v in results[n].items()}
    one, two = summary["workers_1"], summary["workers_2"]
    for key, label in (
        ("us_per_connection", "relay CPU per new connection (forward), µs"),
        ("us_per_socks_connection", "relay CPU per new connection (SOCKS), µs"),
        ("s_per_gb", "relay CPU per GB, s"),
        ("mb_per_s", "bulk send, MB/s (context)"),
    ):
        rows.append((label, f"{one[key]:,.1f}", f"{two[key]:,.1f}", f"{two[key] / one[key]:.2f}x"))
    print(report.format_table(["", "--workers 1", "--workers 2", "2 / 1"], rows))
    print(
        f"SIGHUP upgrade, 2 workers replaced one at a time: {reload['seconds']:.2f} s "
        f"(the parent's own figure: {reload['logged']:.2f} s)"
    )
    data = {"machine": report.machine(), "argv": args.argv, **summary, "reload": reload}
    print(f"results: {report.write_json(args.json, data)}")
    return 0


def _costs(path: WorkersPath, args: argparse.Namespace) -> dict[str, float]:
    before = path.relay_cpu()
    dialed = client(
        "dial",
        path.ports["echo"],
        "--count",
        args.connections,
        "--concurrency",
        args.concurrency,
        "--seconds",
        600,
        timeout=660,
    )
    middle = path.relay_cpu()
    if dialed["done"] != args.connections:
        raise Failed(f"{dialed['done']} of {args.connections} connections served")
    through_socks = client(
        "dial",
        path.ports["socks"],
        "--socks",
        f"{HOST}.bridge-{BRIDGE}",
        "--target-port",
        path.targets["echo"],
        "--count",
        args.connections,
        "--concurrency",
        args.concurrency,
        "--seconds",
        600,
        timeout=660,
    )
    socks_done = path.relay_cpu()
    if through_socks["done"] != args.connections:
        raise Failed(f"{through_socks['done']} of {args.connections} SOCKS connections served")
    sent = client("send", path.ports["sink"], "--seconds", args.seconds, timeout=args.seconds + 120)
    after = path.relay_cpu()
    return {
        "us_per_connection": (middle - before) / args.connections * 1e6,
        "us_per_socks_connection": (socks_done - middle) / args.connections * 1e6,
        "s_per_gb": (after - socks_done) / (sent["bytes"] / 1e9),
        "mb_per_s": sent["mbps"],
    }


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
