# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real `bridge-agent` against a relay that tells every session to move ("move"
capability) at once, and holds a tunnel open on each so that none finishes by itself: the
agent's sessions, connection attempts and memory stay bounded, and once the relay stops
saying so the agent serves again.

The hostile relay (`mover_support`) listens on 127.0.0.2."""

from __future__ import annotations

import re
import sys
from functools import partial

import trio

from bridge.transport.tls import certificate_fingerprint
from relay.testing import ThrowawayCA

from ..e2e.e2e_support import ROOT, Launcher, Relay
from ..faults.traffic import echo, rss_kib
from .quota_support import ATTACKER, descriptors, tracebacks

SECONDS = 20
DRAIN_TIMEOUT = 3  # the agent's --drain-timeout: how long a moved session may linger
MAX_BACKOFF = 8  # the agent's --max-backoff
CONNECTIONS = 2  # the agent's default RELAY_CONNECTIONS


def most_logins(seconds: float, connections: int, max_backoff: float) -> int:
    """The most logins an agent can make in ``seconds`` against a relay that tells every
    session to move the moment it is up: each of its ``connections`` sessions moves after
    the next delay of one backoff that all moves share, and a delay is at least half its
    ceiling (1, 2, 4 s ... up to ``max_backoff``). Logins themselves take no time here."""
    logins, attempts = connections, 0
    told = [0.0] * connections  # when each connection's newest session was told to move
    while True:
        first = min(range(connections), key=told.__getitem__)
        ceiling = min(max_backoff, 2.0**attempts)
        attempts += 1
        told[first] += ceiling / 2
        if told[first] > seconds:
            return logins
        logins += 1


#: Logins the agent may make in SECONDS whatever its random draws (13 for 20 s, 2
#: connections, a backoff of at most 8 s).
LOGIN_BOUND = most_logins(SECONDS, CONNECTIONS, MAX_BACKOFF)
#: Sessions open at once: its connections (2) plus the moved ones still draining.
LIVE_BOUND = 6
RSS_BOUND = 8 * 1024  # KiB


def live(process) -> int:
    """The hostile relay's sessions the agent keeps open, as it last printed them."""
    found = re.findall(r"^sessions=\d+ live=(\d+)$", process.stdout(), re.MULTILINE)
    return int(found[-1]) if found else 0


async def test_a_relay_that_keeps_saying_move_is_followed_within_bounds(
    launch: Launcher, nursery, tmp_path
):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    ca = ThrowawayCA.create()
    _, cert, key = ca.write(tmp_path)
    argv = [sys.executable, "-m", "tests.adversarial.mover_support"]
    argv += ["--listen", ATTACKER, "--cert", cert, "--key", key]
    argv += ["--target", target, "--seconds", SECONDS, "--settle", MAX_BACKOFF + DRAIN_TIMEOUT + 2]
    mover = launch.start("hostile-relay", list(map(str, argv)), cwd=ROOT)
    listening = await trio.to_thread.run_sync(
        partial(mover.wait_for, r"^listening on (\d+)$", stream="stdout")
    )
    port = int(listening[1])
    agent = await trio.to_thread.run_sync(
        partial(
            launch.agent,
            Relay(mover, port, {}),
            [target],
            wait=False,
            RELAY_URL=f"tls://{ATTACKER}:{port}",
            RELAY_FINGERPRINT=certificate_fingerprint(ca.cert_der),
            DRAIN_TIMEOUT=str(DRAIN_TIMEOUT),
            RECONNECT_MAX_BACKOFF=str(MAX_BACKOFF),
        )
    )
    await trio.to_thread.run_sync(partial(mover.wait_for, r"^sessions=[1-9]", stream="stdout"))
    pid = agent.popen.pid
    rss_before, most_live, most_fds = rss_kib(pid), 0, 0
    while mover.poll() is None and "round trip:" not in mover.stdout():
        most_live = max(most_live, live(mover))
        most_fds = max(most_fds, descriptors(pid))
        await trio.sleep(0.2)
    await trio.to_thread.run_sync(partial(mover.wait_for, "^done$", stream="stdout"))
    logins = int(re.search(r"^moves over: sessions=(\d+)", mover.stdout(), re.M)[1])
    growth = rss_kib(pid) - rss_before
    served = re.search(r"^round trip: (.*)$", mover.stdout(), re.MULTILINE)
    assert served is not None
    print(
        f"\n{SECONDS} s of 'move' on every session: {logins} logins, at most {most_live} "
        f"sessions open at once, at most {most_fds} descriptors, RSS +{growth} KiB; "
        f"a tunnel through the newest session: {served[1]}"
    )
    assert 0 < logins <= LOGIN_BOUND
    assert most_live <= LIVE_BOUND
    assert growth < RSS_BOUND
    assert served[1] == "ok"
    assert agent.poll() is None
    assert tracebacks(agent.stderr()) == 0
