# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real `bridge-relay serve` run out of file descriptors (a low `ulimit -n`) by idle
connections from one address: it sheds the newest connections, logs that once per interval
without a traceback, and another bridge's forward works again once the attack stops."""

from __future__ import annotations

import resource
import time
from functools import partial

import trio

from .quota_support import ATTACKER, VICTIM, connect_from, descriptors, echo, round_trip, tracebacks

DESCRIPTORS = 64  # the relay's limit
HANDSHAKE_TIMEOUT = 3
ATTACK_TIME = 6.0


def low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


async def test_out_of_descriptors_sheds_new_work_with_one_log_line(launch, bridge, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            target,
            args=["--handshake-timeout", str(HANDSHAKE_TIMEOUT)],
            preexec_fn=low_descriptor_limit,
        )
    )
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    forward, pid = relay.forwards[target], relay.process.popen.pid
    assert await round_trip(forward, VICTIM)
    before = descriptors(pid)

    # Idle connections, more than the relay has descriptors for, and more all along.
    held: list[trio.SocketStream] = []
    attempts = 0
    started = time.monotonic()
    most = before
    while time.monotonic() - started < ATTACK_TIME:
        for _ in range(20):
            attempts += 1
            try:
                held.append(await connect_from(ATTACKER, relay.agent_port))
            except OSError:
                pass  # the backlog is full: that too is the relay shedding work
        most = max(most, descriptors(pid))
        await trio.sleep(0.1)
    shed = 0
    for stream in held:
        try:
            with trio.move_on_after(0.01):
                if not await stream.receive_some(1):
                    shed += 1
        except trio.BrokenResourceError:
            shed += 1
        await trio.aclose_forcefully(stream)

    # The attack is over: the victim's forward works again within a few handshake timeouts.
    recovered = None
    with trio.move_on_after(4 * HANDSHAKE_TIMEOUT):
        while True:
            try:
                if await round_trip(forward, VICTIM):
                    recovered = time.monotonic() - started - ATTACK_TIME
                    break
            except OSError:
                pass
            await trio.sleep(0.2)
    log = relay.process.stderr()
    lines = log.count("Out of file descriptors") + log.count("Cannot accept connections")
    print(
        f"\nrelay with {DESCRIPTORS} descriptors ({before} in use before): {attempts} idle "
        f"connections in {ATTACK_TIME:g} s, {shed} closed by the relay by its end; at most "
        f"{most} descriptors; {lines} log lines about it; victim forward back after "
        f"{recovered if recovered is None else round(recovered, 2)} s"
    )
    assert relay.process.poll() is None
    assert most <= DESCRIPTORS
    assert shed > 0
    assert 1 <= lines <= 2, lines  # the first, and one summary per 10 s interval
    assert tracebacks(log) == 0
    assert recovered is not None
    nursery.cancel_scope.cancel()


async def test_out_of_descriptors_the_metrics_endpoint_sheds_without_a_traceback(
    launch, bridge, nursery
):
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            args=["--handshake-timeout", "60", "--metrics", "127.0.0.1:0"],
            preexec_fn=low_descriptor_limit,
        )
    )
    listening = await trio.to_thread.run_sync(
        partial(
            relay.process.wait_for, r"^metrics: listening on 127\.0\.0\.1:(\d+)$", stream="stdout"
        )
    )
    metrics_port, pid = int(listening[1]), relay.process.popen.pid
    # Idle connections to the agent port until the relay has no descriptor left.
    held: list[trio.SocketStream] = []
    while descriptors(pid) < DESCRIPTORS - 1 and len(held) < 2 * DESCRIPTORS:
        held.append(await connect_from(ATTACKER, relay.agent_port))
        await trio.sleep(0.01)
    shed = 0
    for _ in range(5):
        with trio.move_on_after(2):
            async with await connect_from(ATTACKER, metrics_port) as scrape:
                await scrape.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    if not await scrape.receive_some(1):
                        shed += 1
                except trio.BrokenResourceError:
                    shed += 1
    for stream in held:
        await trio.aclose_forcefully(stream)
    log = relay.process.stderr()
    print(
        f"\nrelay with {DESCRIPTORS} descriptors, {len(held)} idle connections: {shed} of 5 "
        f"scrapes closed at once; {tracebacks(log)} tracebacks"
    )
    assert relay.process.poll() is None
    assert shed > 0
    assert "Out of file descriptors" in log
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()
