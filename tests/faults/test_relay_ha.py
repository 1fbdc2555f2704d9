# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Several agents for one bridge against a real `bridge-relay serve`: new tunnels are spread
over them, and killing one (kill -9) fails none of the new tunnels."""

from __future__ import annotations

import os
import re
import signal
from functools import partial

import trio

from ..e2e.e2e_support import Launcher
from .traffic import echo, transfer

CONNECTIONS = 100
KILL_AFTER = 30


async def test_killing_one_of_two_agents_fails_no_new_connection(launch: Launcher, nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(launch.relay, target)
    # DEBUG: each agent logs every connection it serves ("Proxying connection").
    start_agent = partial(launch.agent, relay, [target], LOG_LEVEL="DEBUG")
    doomed = await trio.to_thread.run_sync(start_agent)
    survivor = await trio.to_thread.run_sync(start_agent)
    forward = relay.forwards[target]

    async def kill_soon() -> None:
        await trio.sleep(1)
        doomed.stop()  # SIGKILL

    results = []
    for i in range(CONNECTIONS):
        if i == KILL_AFTER:
            # Frozen first, so that one of the next connections is surely waiting for its
            # answer on that agent when it dies: that one is retried on the other.
            os.killpg(doomed.popen.pid, signal.SIGSTOP)
            nursery.start_soon(kill_soon)
        results.append(await transfer(forward, 32 * 1024 + i))
    assert results == [True] * CONNECTIONS

    served = [p.stderr().count("\tProxying connection\t") for p in (doomed, survivor)]
    assert served[0] >= KILL_AFTER // 2 - 1 and sum(served) >= CONNECTIONS  # spread, then moved
    log = relay.process.stderr()
    assert re.search(
        r'\tBridge disconnected\t.*"reason": "the (peer closed the connection|'
        r"connection was lost)",
        log,
    ), log
    assert "\tRetrying a tunnel on another agent\t" in log
    assert "Tunnel refused" not in log and "Traceback" not in log
