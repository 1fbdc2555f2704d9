# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""CPU time per new connection and per message, for ``python -m bench tunnel``.

A fixed workload through one path: CONNECTIONS new connections (CONCURRENCY at a time, each
one 32-byte round trip, then closed), then MESSAGES round trips of 1 KiB on one connection,
then BULK_SECONDS of one stream of bulk data, whose cost is given per GB: to the built-in sink,
or with iperf3 on a path that cannot half-close (the Go tunnels), sent ``bulk_sends`` times on
the same processes, the median per process (one send moves with whatever else the machine
does during its 3 s).
The user + system CPU time of each process carrying the path (``/proc/PID/stat``, all its
threads and, for sshd, its per-session children) is read before and after each; the
difference divided by the connections, or by 2 x MESSAGES (each round trip crosses every
process once each way), is the cost. The load's own processes are measured the same way:
the client (from its own ``time.process_time()`` over its loop) and the echo server, so that
the direct-TCP row shows what the kernel and the load cost with no tunnel at all.

CPU time is counted in clock ticks (10 ms at the usual 100 Hz): over a workload of CPU time T,
a process's figure is good to about 10 ms / T.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench.clients import Failed, client
from bench.paths import BenchPath
from bench.procs import cpu_seconds, descendants

COST_TIMEOUT = 600.0
BULK_SECONDS = 3.0


def cpu_of(roles: dict[str, list[int]]) -> dict[str, float]:
    """Role -> CPU seconds so far, summed over the role's processes."""
    return {role: sum(cpu_seconds(pid) or 0.0 for pid in pids) for role, pids in roles.items()}


def _roles(path: BenchPath, server_pid: int) -> dict[str, list[int]]:
    """Role -> pids: the path's processes, and the echo server (the serving processes)."""
    return {**path.processes(), "echo server": [server_pid, *descendants(server_pid)]}


def measure(
    path: BenchPath,
    server_pid: int,
    connections: int,
    messages: int,
    concurrency: int,
    bulk_sends: int = 1,
    bulk: Callable[[], int] | None = None,
) -> dict:
    """The path's CPU cost per new connection and per message per direction, in µs per role
    (``client`` and ``echo server`` included), and per GB: the median of ``bulk_sends`` calls
    of `bulk`, which sends one stream for BULK_SECONDS and returns the bytes it carried
    (without it, none). Raises Failed if the workload did not complete: a cost over fewer
    connections or messages than asked would not compare."""
    port = path.ports["echo"]
    before = cpu_of(_roles(path, server_pid))
    dialed = client(
        "dial",
        port,
        "--count",
        connections,
        "--concurrency",
        concurrency,
        "--seconds",
        COST_TIMEOUT,
        timeout=COST_TIMEOUT + 60,
    )
    middle = cpu_of(_roles(path, server_pid))
    if dialed["done"] != connections:
        raise Failed(
            f"{dialed['done']:,} of {connections:,} connections served: {dialed['first_error']}"
        )
    echoed = client(
        "rtt",
        port,
        "--count",
        messages,
        "--warmup",
        0,
        "--seconds",
        COST_TIMEOUT,
        timeout=COST_TIMEOUT + 60,
    )
    after = cpu_of(_roles(path, server_pid))
    if echoed["messages"] != messages:
        raise Failed(f"{echoed['messages']:,} of {messages:,} round trips made")
    per_connection = {role: (middle[role] - before[role]) / connections * 1e6 for role in before}
    per_message = {role: (after[role] - middle[role]) / (2 * messages) * 1e6 for role in before}
    per_connection["client"] = dialed["cpu_s"] / connections * 1e6
    per_message["client"] = echoed["cpu_s"] / (2 * messages) * 1e6
    carriers = [role for role in before if role != "echo server"]
    got = {
        "connections": connections,
        "messages": messages,
        "carriers": carriers,
        "connection_us": per_connection,
        "message_us": per_message,
        "connection_total_us": sum(per_connection[role] for role in carriers),
    }
    if bulk is not None:
        sends: list[dict[str, float]] = []
        total = 0
        for _ in range(bulk_sends):
            start = cpu_of(_roles(path, server_pid))
            carried = bulk()
            end = cpu_of(_roles(path, server_pid))
            if carried:
                total += carried
                sends.append({role: (end[role] - start[role]) / carried * 1e9 for role in carriers})
        if sends:
            got["bulk_bytes"] = total
            got["bulk_sends"] = len(sends)
            got["gb_cpu_s"] = {
                role: statistics.median(send[role] for send in sends) for role in carriers
            }
    return got


def to_sink(port: int) -> int:
    """One stream of BULK_SECONDS to the built-in sink at `port`; the bytes it counted."""
    sent = client("send", port, "--seconds", BULK_SECONDS, timeout=BULK_SECONDS + 60)
    return sent["bytes"]


def hop(peered: dict, tunnel: dict) -> dict:
    """What the peer hop adds, from the costs of the peered path (roles ``relay A`` and
    ``relay B``) and of the single-node tunnel (role ``relay``): per new connection and per
    message (µs), and per GB (CPU seconds) where both measured it, the two relays' CPU time
    minus the single relay's; and that relay's own, the figure the hop is held to."""
    relays = [role for role in peered["carriers"] if role.startswith("relay ")]
    return {
        kind: {
            "added": sum(peered[kind][role] for role in relays) - tunnel[kind]["relay"],
            "one_node": tunnel[kind]["relay"],
        }
        for kind in ("connection_us", "message_us", "gb_cpu_s")
        if kind in peered and kind in tunnel
    }
