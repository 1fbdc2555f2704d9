# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A hostile relay node of a cluster (it registered its peer certificate, so it passes the
peer handshake) against real nodes: presence messages without pause, each listing the most
bridges allowed, or streams opened without end. The victim's memory and CPU stay bounded,
its own tunnels and those of an honest peer through it keep working, and it says what it
does about the hostile node in one log line.

The hostile node (`peer_flood_support`) listens on 127.0.0.2; its name sorts after the
others', so they dial it."""

from __future__ import annotations

import sys
from functools import partial

import pytest
import trio

from bench.procs import cpu_seconds

from ..e2e.e2e_support import ROOT, Launcher, clean_env
from ..faults.traffic import echo, rss_kib
from .quota_support import ATTACKER, round_trip, tracebacks

FLOOD_SECONDS = 12
#: What the victim may spend on one hostile peer: CPU seconds per second of flood, and
#: memory (KiB) beyond what it held once the hostile node was linked.
CPU_SHARE_BOUND = 0.5
RSS_BOUND = 64 * 1024
#: What each mode is answered with, in the victim's log.
EXPECTED = {
    "presence": "\tPeer presence throttled: ",
    "streams": "\tPeer opens too many streams: refusing those beyond the limit\t",
}


async def served(
    ports: list[int], seconds: float, slowest: list[float] | None = None
) -> list[bool]:
    """Round trips through each forward port in turn, for `seconds` (the slowest one's
    seconds into `slowest`)."""
    outcomes = []
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        for port in ports:
            began = trio.current_time()
            with trio.move_on_after(5):
                try:
                    outcomes.append(await round_trip(port, "127.0.0.1"))
                except (OSError, trio.BrokenResourceError):  # refused: reset
                    outcomes.append(False)
                if slowest is not None:
                    slowest[:] = [max([*slowest, trio.current_time() - began])]
                continue
            outcomes.append(False)
        await trio.sleep(0.1)
    return outcomes


@pytest.mark.parametrize("mode", ["presence", "streams"])
async def test_a_hostile_peer_node_is_held_to_bounds(
    cluster: Launcher, postgres_url: str, nursery, mode: str
):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    # A bridge's streams and waiting opens: a peer node may take half of each.
    limits = ["--max-streams-per-bridge", "64"]
    victim = await trio.to_thread.run_sync(
        partial(cluster.node, "node1", postgres_url, target, args=limits)
    )
    honest = await trio.to_thread.run_sync(partial(cluster.node, "node2", postgres_url, target))
    await trio.to_thread.run_sync(cluster.agent, victim, [target])
    for node in (victim, honest):
        await trio.to_thread.run_sync(partial(node.process.wait_for, r"\tPeer link up\t"))
    ports = [victim.forwards[target], honest.forwards[target]]
    with trio.fail_after(10):  # until node2 has node1's presence
        while not all(await served(ports, 0.01)):
            await trio.sleep(0.1)
    pid = victim.process.popen.pid

    data_dir = cluster.node_dir("x-hostile")
    data_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "tests.adversarial.peer_flood_support", mode]
    argv += ["--data-dir", data_dir, "serve", "--listen", f"{ATTACKER}:0", "--store"]
    argv += [postgres_url, "--node", "x-hostile", "--node-timeout", "3", "--peer-listen"]
    argv += [f"{ATTACKER}:0"]
    env = clean_env(HOSTILE_TARGET=target)
    hostile = cluster.start("hostile-node", list(map(str, argv)), cwd=ROOT, env=env)
    await trio.to_thread.run_sync(partial(hostile.wait_for, r"^sent=[1-9]", stream="stdout"))
    cpu_before, rss_before = cpu_seconds(pid) or 0.0, rss_kib(pid)
    slowest: list[float] = []
    outcomes = await served(ports, FLOOD_SECONDS, slowest)
    cpu_share = ((cpu_seconds(pid) or 0.0) - cpu_before) / FLOOD_SECONDS
    growth = rss_kib(pid) - rss_before
    log = victim.process.stderr()
    print(
        f"\nhostile peer ({mode}): {hostile.stdout().split()[-1]} in {FLOOD_SECONDS} s; the "
        f"victim spent {cpu_share:.2f} CPU s/s, RSS +{growth} KiB; round trips through it "
        f"and through an honest peer: {outcomes.count(True)} of {len(outcomes)} served, the "
        f"slowest in {slowest[0] * 1000:.0f} ms"
    )
    assert all(outcomes)
    assert cpu_share < CPU_SHARE_BOUND
    assert growth < RSS_BOUND
    assert EXPECTED[mode] in log
    assert tracebacks(log) == 0 and "Unexpected error" not in log
