# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Per-bridge quotas of a real `bridge-relay serve`, attacked by one bridge's stolen
credential: its sessions are capped (newest logins refused BUSY), its streams are capped
counting the opens in flight, the streams it opens itself are reset at once, and another
bridge's forward keeps working throughout."""

from __future__ import annotations

import time
from functools import partial

import trio

import mux
from bridge.protocol.handshake import WelcomeStatus

from ..faults.traffic import start_echo
from .quota_support import (
    ATTACKER,
    VICTIM,
    add_bridge,
    connect_from,
    descriptors,
    hostile_agent,
    login,
    round_trip,
    tracebacks,
)

SESSIONS = 8  # the default --max-sessions-per-bridge
LOGINS = 3000
LOGIN_TIME = 20.0  # seconds the login flood may take at most
CONCURRENT_LOGINS = 16


async def test_one_credential_logging_in_3000_times_gets_its_sessions_capped(
    launch, bridge, nursery
):
    target = await start_echo(nursery)
    thief_id, thief_secret = await trio.to_thread.run_sync(add_bridge, bridge.data_dir, "stolen")
    relay = await trio.to_thread.run_sync(launch.relay, target)
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    forward, pid = relay.forwards[target], relay.process.popen.pid
    assert await round_trip(forward, VICTIM)
    before = descriptors(pid)

    outcomes: dict[WelcomeStatus, int] = {}
    most_descriptors = before
    victim_trips: list[bool] = []
    started = time.monotonic()
    remaining = iter(range(LOGINS))

    async def attacker() -> None:
        for _ in remaining:
            welcome, tls = await login(relay.agent_port, thief_id, thief_secret, ATTACKER)
            outcomes[welcome.status] = outcomes.get(welcome.status, 0) + 1
            if welcome.status == WelcomeStatus.OK:
                holders.start_soon(hold, tls)  # a live session the relay must keep
            else:
                await trio.aclose_forcefully(tls)

    async def hold(tls: trio.SSLStream) -> None:
        async with tls, mux.open_session(tls, client=True):
            await trio.sleep_forever()  # answering the relay's pings

    async def victim() -> None:
        nonlocal most_descriptors
        while True:
            victim_trips.append(await round_trip(forward, VICTIM))
            most_descriptors = max(most_descriptors, descriptors(pid))
            await trio.sleep(0.2)

    holders = nursery
    with trio.move_on_after(LOGIN_TIME):
        async with trio.open_nursery() as attack:
            attack.start_soon(victim)
            async with trio.open_nursery() as attackers:
                for _ in range(CONCURRENT_LOGINS):
                    attackers.start_soon(attacker)
            attack.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    logins = sum(outcomes.values())
    after = descriptors(pid)
    print(
        f"\n{logins} logins in {elapsed:.1f} s: {outcomes.get(WelcomeStatus.OK, 0)} admitted, "
        f"{outcomes.get(WelcomeStatus.BUSY, 0)} refused BUSY; relay descriptors {before} before, "
        f"at most {most_descriptors} during, {after} after; victim round trips "
        f"{sum(victim_trips)}/{len(victim_trips)}"
    )
    assert logins >= 1000  # the flood went on long enough to matter
    assert outcomes.get(WelcomeStatus.OK, 0) == SESSIONS
    assert outcomes.get(WelcomeStatus.BUSY, 0) == logins - SESSIONS
    assert most_descriptors < before + SESSIONS + 2 * CONCURRENT_LOGINS
    assert victim_trips and all(victim_trips)
    assert await round_trip(forward, VICTIM)
    # The refused agent is told why, and the relay says so once per interval, not per login.
    welcome, tls = await login(relay.agent_port, thief_id, thief_secret, ATTACKER)
    await trio.aclose_forcefully(tls)
    assert welcome.status == WelcomeStatus.BUSY
    assert "already has 8 agent sessions" in welcome.message, welcome.message
    log = relay.process.stderr()
    refusals = log.count("Login refused: the bridge has as many sessions as allowed")
    summaries = log.count("Logins refused, bridge stolen at its limit of 8 sessions")
    print(f"log lines about the refused logins: {refusals} + {summaries} summaries")
    assert 1 <= refusals + summaries <= 2 * (elapsed // 10 + 2)  # per 10 s interval
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()


async def test_streams_over_the_limit_are_refused_while_opens_are_in_flight(
    launch, bridge, nursery
):
    # The bridge's agent is slow to accept streams: once `accept_backlog` (256) of them wait
    # for its ACK, the relay's further opens wait for a session slot before they are streams.
    limit, clients = 260, 320
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            "127.0.0.1:9",
            args=["--max-streams-per-bridge", str(limit), "--max-pending-opens", "1000"],
        )
    )
    forward = relay.forwards["127.0.0.1:9"]
    # Its own backlog is roomier than the relay's, so that it never refuses a stream itself.
    roomy = mux.Config(accept_backlog=4 * clients)
    async with hostile_agent(
        relay.agent_port, bridge.id, bridge.secret, ATTACKER, roomy
    ) as session:
        held = []
        async with trio.open_nursery() as burst:
            for _ in range(clients):
                burst.start_soon(_hold, forward, held)
        await trio.sleep(2)  # every open has passed the relay's limit check or been refused
        streams = []  # then the agent accepts them: up to the limit, and any beyond
        with trio.move_on_after(10):
            while len(streams) < limit:
                streams.append(await session.accept_stream())
        with trio.move_on_after(2):
            while True:
                streams.append(await session.accept_stream())
        print(
            f"\n{clients} clients at once, limit {limit}: {len(streams)} streams reached the agent"
        )
        assert len(streams) == limit
        for client in held:
            await trio.aclose_forcefully(client)
    log = relay.process.stderr()
    assert f"{limit} streams open, the limit" in log
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()


async def _hold(port: int, held: list[trio.SocketStream]) -> None:
    held.append(await connect_from(VICTIM, port))


async def test_streams_an_agent_opens_are_reset_at_once(launch, bridge, nursery):
    streams = 500
    target = await start_echo(nursery)
    thief_id, thief_secret = await trio.to_thread.run_sync(add_bridge, bridge.data_dir, "hostile")
    relay = await trio.to_thread.run_sync(launch.relay, target)
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    forward = relay.forwards[target]

    outcomes: dict[str, int] = {}
    async with hostile_agent(relay.agent_port, thief_id, thief_secret, ATTACKER) as session:
        started = time.monotonic()

        async def open_one() -> None:
            stream = await session.open_stream()
            try:
                outcome = "data" if await stream.receive_some() else "eof"
            except mux.StreamReset:
                outcome = "reset"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        with trio.move_on_after(10):
            async with trio.open_nursery() as opens:
                for _ in range(streams):
                    opens.start_soon(open_one)
        elapsed = time.monotonic() - started
        print(
            f"\n{streams} streams opened by an agent: {outcomes} in {elapsed:.2f} s; "
            f"still open on its side: {session.streams_open}"
        )
        assert outcomes == {"reset": streams}
        assert session.streams_open == 0
        assert await round_trip(forward, VICTIM)
    assert tracebacks(relay.process.stderr()) == 0
    nursery.cancel_scope.cancel()
