# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bursts of simultaneous connections, for ``python -m bench tunnel``.

COUNT connections opened at once (one client process, every connect issued before any is
served), each doing one 32-byte round trip with the echo server and closing, within 180 s:
through a
path's forward, through the relay's SOCKS5 front door, and as COUNT concurrent
``relay.connect`` calls in a process embedding the relay (bench/connect_burst.py, with a
connect deadline of `CONNECT_DEADLINE` s: the calls wait that long for a slot). Each burst
starts its processes afresh, so that the peak memory (VmHWM) is the burst's. Reported: how
many were served, how many failed and how (resets, refusals), how many were still unanswered
at the end, the seconds until the last was served, and the peak resident memory of the
process that accepts them (the relay; ssh for ``ssh -L``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.clients import Failed, client
from bench.paths import BRIDGE, HOST, BenchPath, console_script
from bench.procs import Proc, StartError, clean_env, memory_kib, python_module

BURST_SECONDS = 180.0  # bound on one burst
#: The connect deadline (`RelayConfig.connect_timeout`) the relay.connect burst's relay is
#: given, as an embedding service sets the one its callers can wait: on a loaded two-core
#: machine the agent answers about 250 opens a second, so the last of 5,000 waits ~20 s,
#: beyond the default 15 s. The report says which deadline was used.
CONNECT_DEADLINE = 60.0
# path -> role of the process that accepts; default "relay"
ACCEPTOR = {"ssh": "ssh", "peered": "relay B", "go-peered": "relay B"}


def _peak(path: BenchPath) -> dict[str, int]:
    """Role -> VmHWM in KiB (the peak resident memory since the process started)."""
    return {
        role: sum(memory_kib(pid).get("VmHWM", 0) for pid in pids)
        for role, pids in path.processes().items()
    }


def _dial_burst(path: BenchPath, count: int, socks_target: int | None) -> dict:
    args: list[object] = ["dial", path.ports["socks" if socks_target else "echo"]]
    if socks_target:
        args += ["--socks", f"{HOST}.bridge-{BRIDGE}", "--target-port", socks_target]
    before = {role: memory_kib(pids[0]).get("VmRSS", 0) for role, pids in path.processes().items()}
    result = client(
        *args,
        "--count",
        count,
        "--concurrency",
        count,
        "--seconds",
        BURST_SECONDS,
        "--timeout",
        BURST_SECONDS,
        timeout=BURST_SECONDS + 60,
    )
    acceptor = ACCEPTOR.get(path.name, "relay")
    return {
        "done": result["done"],
        "failed": result["failed"],
        "unanswered": result["unanswered"],
        "errors": result["errors"],
        "seconds": result["last_served_s"],
        "acceptor": acceptor,
        "rss_before_kib": before.get(acceptor),
        "peak_kib": _peak(path).get(acceptor),
    }


def through_path(path: BenchPath, count: int, *, socks_target: int | None = None) -> dict:
    """A burst through `path`'s forward to the echo server, or (`socks_target`: the echo
    server's port) through its SOCKS5 front door; the path is started afresh and stopped."""
    path.start()
    try:
        return _dial_burst(path, count, socks_target)
    finally:
        path.stop()


def relay_connect(workdir: Path, echo_port: int, count: int) -> dict:
    """COUNT concurrent `relay.connect` calls to the echo server, in a process embedding the
    relay, with a `bridge-agent` process as the bridge's agent."""
    data = workdir / "connect-burst"
    relay = Proc(
        "connect-burst",
        python_module(
            "bench.connect_burst", "--data-dir", data, "--connect-timeout", CONNECT_DEADLINE
        ),
        workdir,
        stdin=True,
    )
    agent = None
    try:
        ready = json.loads(relay.wait_for(r"^\{.*\}$")[0])
        env = clean_env(
            BRIDGE_ID=ready["bridge_id"],
            BRIDGE_SECRET=ready["secret"],
            RELAY_FINGERPRINT=ready["fingerprint"],
            RELAY_URL=f"tls://{HOST}:{ready['port']}",
            ALLOW=f"{HOST}:*",
        )
        agent = Proc("connect-burst-agent", [console_script("bridge-agent")], workdir, env=env)
        agent.wait_for(r"Handling incoming proxy connections", stream="stderr")
        relay.send_line(f"{count} {HOST} {echo_port}")
        try:
            result = json.loads(relay.wait_for(r'^\{"done".*\}$', timeout=BURST_SECONDS + 60)[0])
        except StartError as exc:
            raise Failed(str(exc)) from None
        result["acceptor"] = "relay"
        return result
    finally:
        for proc in (agent, relay):
            if proc is not None:
                proc.stop()
