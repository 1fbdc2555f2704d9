# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""2,000 clients connecting at once to a real `bridge-relay serve`, through a forward and
through the SOCKS front door: all are served, none is reset (the opens beyond the bridge's
`--max-pending-opens` wait in the listen backlog or for a slot), while another bridge's
connections go on being served meanwhile."""

from __future__ import annotations

import pytest
import trio

from .burst_support import OTHER, burst, one_exchange, raise_descriptor_limit, start
from .quota_support import ATTACKER, VICTIM, tracebacks

CONNECTIONS = 2000


@pytest.mark.parametrize("door", ["forward", "socks"])
async def test_a_burst_of_2000_connections_is_served_whole(launch, bridge, nursery, door):
    assert raise_descriptor_limit() > 3 * CONNECTIONS
    setup = await start(launch, nursery)
    if door == "forward":
        port, socks, other_port, other_socks = setup.forward, None, setup.other_forward, None
    else:
        port, socks = setup.socks, (bridge.name, setup.target)
        other_port, other_socks = setup.socks, (OTHER, setup.target)
    assert await one_exchange(VICTIM, other_port, other_socks) == "served"

    others: list[str] = []
    during: list[str] = []  # the other bridge's outcomes while the burst was being served
    done = trio.Event()

    async def other_bridge() -> None:
        while not done.is_set():
            outcome = await one_exchange(VICTIM, other_port, other_socks)
            others.append(outcome)
            if not done.is_set():
                during.append(outcome)
            await trio.sleep(0.05)

    with trio.fail_after(60):
        async with trio.open_nursery() as both:
            both.start_soon(other_bridge)
            outcomes = await burst(CONNECTIONS, ATTACKER, port, socks=socks)
            done.set()
    assert outcomes == {"served": CONNECTIONS}
    assert set(others) == {"served"}
    assert during, "the other bridge was not served while the burst was"
    logs = launch.logs()
    assert "connections waiting for the agent's answer, the limit" not in logs
    assert "no slot for a new connection" not in logs
    assert tracebacks(logs) == 0
