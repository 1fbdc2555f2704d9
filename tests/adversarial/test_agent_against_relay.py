# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real `bridge-agent` against a relay that asks too much: names outside
`--resolve-names` are refused without a lookup, and a flood of opens to one target that does
not answer is held to a few connection attempts in flight, while other targets work."""

from __future__ import annotations

import socket
from functools import partial

import trio

from ..e2e.e2e_support import relay_cli
from .quota_support import ATTACKER, VICTIM, connect_from, echo, round_trip, tracebacks

DIALS_PER_TARGET = 16  # AgentConfig.max_dials_per_target
SYN_SENT = "02"


async def test_names_outside_resolve_names_are_never_resolved(launch, bridge, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    relay = await trio.to_thread.run_sync(launch.relay)
    # A CIDR rule covers localhost's address; only names under corp.test may be resolved.
    agent = await trio.to_thread.run_sync(
        partial(launch.agent, relay, [f"127.0.0.0/8:{port}"], RESOLVE_NAMES="*.corp.test")
    )
    by_name = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "test", bridge.name, f"localhost:{port}"
    )
    by_address = await trio.to_thread.run_sync(
        relay_cli, bridge.data_dir, "test", bridge.name, f"127.0.0.1:{port}"
    )
    print(f"\nlocalhost: {by_name.stderr.strip()}\n127.0.0.1: {by_address.stdout.strip()}")
    assert by_name.returncode == 1 and "--resolve-names" in by_name.stderr
    assert by_address.returncode == 0 and by_address.stdout.startswith("OK")
    assert "DNS lookup" not in agent.stderr()
    assert tracebacks(agent.stderr()) == 0
    nursery.cancel_scope.cancel()


def connect_attempts(port: int) -> int:
    """Sockets on this host in SYN-SENT towards 127.0.0.1:port."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == SYN_SENT and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


async def test_connection_attempts_to_one_target_are_capped_and_wait(launch, bridge, nursery):
    # A target whose accept queue is full: further SYNs go unanswered, attempts hang.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    hole = f"127.0.0.1:{blackhole.getsockname()[1]}"
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(launch.relay, hole, target)
    agent = await trio.to_thread.run_sync(launch.agent, relay, [hole, target])
    clients = []
    for _ in range(100):
        clients.append(await connect_from(ATTACKER, relay.forwards[hole]))
    most = 0
    with trio.move_on_after(3):
        while True:
            most = max(most, connect_attempts(blackhole.getsockname()[1]))
            await trio.sleep(0.1)
    other_target = await round_trip(relay.forwards[target], VICTIM)
    print(
        f"\n100 tunnels to an unanswering target: at most {most} connection attempts in "
        f"flight (cap {DIALS_PER_TARGET}); another target meanwhile: "
        f"{'works' if other_target else 'fails'}"
    )
    assert 0 < most <= DIALS_PER_TARGET
    assert other_target
    log = agent.stderr()
    assert "Host not in allowed" not in log and tracebacks(log) == 0
    for client in clients:
        await trio.aclose_forcefully(client)
    blackhole.close()
    nursery.cancel_scope.cancel()
