# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Control-frame floods against real processes: a logged-in agent that floods a real
`bridge-relay` with PINGs and SYNs while reading slowly, and a relay that floods a real
`bridge-agent` the same way. The victim's memory stays bounded (and does not grow with the
bytes the attacker sends); another bridge's round trips through the relay stay fast.

Attackers and victims use distinct loopback addresses: the hostile agent connects from
127.0.0.2, the hostile relay listens on 127.0.0.3."""

from __future__ import annotations

import re
import sys
import time
from functools import partial

import trio

from bridge.transport.tls import certificate_fingerprint
from relay.testing import ThrowawayCA

from ..e2e.e2e_support import ROOT, Launcher, Relay, clean_env, parse_assignments, relay_cli
from ..faults.traffic import echo, rss_kib

FLOOD_SECONDS = 14
#: What one flooding peer may make its victim hold, at most (KiB), and how much more in the
#: second half of the flood than in the first (the bound does not grow with bytes sent).
RSS_BOUND = 6 * 1024
RSS_DRIFT_BOUND = 1024
#: Another bridge's 1 KiB round trip p99 during the flood, at most: this, or three times
#: what it was before the flood when the machine is loaded enough to make that more.
P99_BOUND = 0.050


def attacker_argv(role: str, *args: object) -> list[str]:
    return [sys.executable, "-m", "tests.adversarial.flood_support", role, *map(str, args)]


def flood_bytes(process) -> tuple[int, int]:
    """What the attacker last reported: bytes of flood its transport took (sent) and bytes
    of the victim's answers it read (received)."""
    reports = re.findall(r"^sent=(\d+) received=(\d+)$", process.stdout(), re.MULTILINE)
    sent, received = reports[-1] if reports else (0, 0)
    return int(sent), int(received)


async def round_trips(port: int, seconds: float) -> list[float]:
    """1 KiB round trips through the forward on 127.0.0.1:`port`, 10 ms apart."""
    times = []
    message = bytes(range(256)) * 4
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            start = time.perf_counter()
            await stream.send_all(message)
            received = 0
            while received < len(message):
                received += len(await stream.receive_some(len(message) - received))
            times.append(time.perf_counter() - start)
            await trio.sleep(0.01)
    return times


def p99(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.99)]


async def test_a_flooding_agent_neither_grows_the_relay_nor_slows_other_bridges(
    launch: Launcher, bridge, nursery
):
    created = relay_cli(bridge.data_dir, "bridges", "create", "attacker", "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    attacker = parse_assignments(created.stdout)
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(launch.relay, target)
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    forward, pid = relay.forwards[target], relay.process.popen.pid
    quiet = await round_trips(forward, 2)
    rss_before = rss_kib(pid)

    flood = launch.start(
        "hostile-agent",
        attacker_argv(
            "agent",
            "--relay",
            f"127.0.0.1:{relay.agent_port}",
            "--source",
            "127.0.0.2",
            "--fingerprint",
            bridge.fingerprint,
            "--seconds",
            FLOOD_SECONDS,
        ),
        env=clean_env(BRIDGE_ID=attacker["BRIDGE_ID"], BRIDGE_SECRET=attacker["BRIDGE_SECRET"]),
        cwd=ROOT,
    )
    await trio.to_thread.run_sync(partial(flood.wait_for, "^logged in$", stream="stdout"))
    half = (FLOOD_SECONDS - 2) / 2
    await trio.sleep(1)
    first = await round_trips(forward, half)
    rss_mid, (sent_mid, answered_mid) = rss_kib(pid), flood_bytes(flood)
    second = await round_trips(forward, half)
    rss_end, (sent_end, answered_end) = rss_kib(pid), flood_bytes(flood)
    during = first + second

    growth, drift = rss_end - rss_before, rss_end - rss_mid
    print(
        f"\nrelay RSS: {rss_before} KiB before the flood, +{rss_mid - rss_before} KiB after "
        f"{sent_mid / 2**20:.1f} MiB of flood, +{growth} KiB after {sent_end / 2**20:.1f} MiB"
        f"\nvictim 1 KiB round trip p99: {p99(quiet) * 1000:.1f} ms quiet, "
        f"{p99(during) * 1000:.1f} ms during the flood ({len(during)} round trips)"
    )
    assert answered_end > answered_mid > 0  # the victim read the flood in both halves
    assert growth < RSS_BOUND
    assert drift < RSS_DRIFT_BOUND
    assert p99(during) <= max(P99_BOUND, 3 * p99(quiet))
    log = relay.process.stderr()
    assert "Traceback" not in log and "Unexpected error" not in log


async def test_a_flooding_relay_does_not_grow_the_agent(launch: Launcher, tmp_path):
    ca = ThrowawayCA.create()
    _, cert, key = ca.write(tmp_path)
    flood = launch.start(
        "hostile-relay",
        attacker_argv(
            "relay",
            "--listen",
            "127.0.0.3",
            "--cert",
            cert,
            "--key",
            key,
            "--seconds",
            FLOOD_SECONDS,
        ),
        cwd=ROOT,
    )
    listening = await trio.to_thread.run_sync(
        partial(flood.wait_for, r"^listening on (\d+)$", stream="stdout")
    )
    port = int(listening[1])
    fake = Relay(flood, port, {})
    agent = await trio.to_thread.run_sync(
        partial(
            launch.agent,
            fake,
            ["127.0.0.1:9"],
            wait=False,
            RELAY_URL=f"tls://127.0.0.3:{port}",
            RELAY_FINGERPRINT=certificate_fingerprint(ca.cert_der),
        )
    )
    await trio.to_thread.run_sync(partial(flood.wait_for, "^agent logged in$", stream="stdout"))
    pid = agent.popen.pid
    await trio.sleep(1)
    rss_before = rss_kib(pid)
    half = (FLOOD_SECONDS - 2) / 2
    await trio.sleep(half)
    rss_mid, (sent_mid, answered_mid) = rss_kib(pid), flood_bytes(flood)
    await trio.sleep(half)
    rss_end, (sent_end, answered_end) = rss_kib(pid), flood_bytes(flood)
    growth, drift = rss_end - rss_before, rss_end - rss_mid
    print(
        f"\nagent RSS: {rss_before} KiB once logged in, +{rss_mid - rss_before} KiB after "
        f"{sent_mid / 2**20:.1f} MiB of flood, +{growth} KiB after {sent_end / 2**20:.1f} MiB"
    )
    assert answered_end > answered_mid > 0  # the victim read the flood in both halves
    assert growth < RSS_BOUND
    assert drift < RSS_DRIFT_BOUND
    log = agent.stderr()
    assert "Traceback" not in log
