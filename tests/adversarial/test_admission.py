# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Attacks on a real `bridge-relay serve` before authentication: idle connections from one
address, a burst of wrong Hellos, thousands of WebSocket connections, a flood of dropped
connections, and forged PROXY headers. Attackers and victims connect from distinct loopback
addresses; each attack is bounded in time, and the figure each assertion is about is printed."""

from __future__ import annotations

import math
import signal
import time
import uuid
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed

from bridge.protocol.handshake import WelcomeStatus
from relay.proxy_protocol import encode_proxy_header
from relay.store import SQLiteStore

from ..e2e.e2e_support import Bridge, Launcher, dropped_by_reason, log_lines
from ..faults.traffic import rss_kib
from .admission_support import (
    VICTIM,
    attacker,
    closed_by_peer,
    connect_from,
    hold_connections,
    login,
    matching,
    websocket_upgrade,
)
from .quota_support import descriptors

MAX_PENDING = 256  # the default


def report(text: str) -> None:
    print(f"\n{text}", flush=True)


async def test_idle_connections_from_one_address_do_not_keep_others_out(
    launch: Launcher, bridge: Bridge, nursery: trio.Nursery
):
    relay = await trio.to_thread.run_sync(partial(launch.relay, args=["--handshake-timeout", "2"]))
    opened = [0]
    nursery.start_soon(hold_connections, MAX_PENDING + 44, attacker(1), relay.agent_port, opened)
    while opened[0] < MAX_PENDING + 44:
        await trio.sleep(0.05)
    await trio.sleep(0.5)  # every slot taken, the excess reopening as it is closed
    results = []
    for _ in range(40):
        results.append(await login(relay.agent_port, bridge.id, bridge.secret, deadline=5))
        await trio.sleep(0.1)
    ok = results.count(WelcomeStatus.OK)
    report(
        f"victim logins during the attack: {ok}/{len(results)} succeeded "
        f"({opened[0]} attacker connections; "
        f"failures: {[r for r in results if r != WelcomeStatus.OK][:5]})"
    )
    assert ok >= 0.95 * len(results)


async def test_a_burst_of_wrong_hellos_is_budgeted_and_others_still_log_in(
    launch: Launcher, bridge: Bridge, nursery: trio.Nursery
):
    victims = 20

    def create() -> list[tuple[str, str]]:  # a fresh bridge per victim login: none cached
        store = SQLiteStore(bridge.data_dir / "bridges.db")
        try:  # cost 10: quick to make
            return [store.create_bridge(f"victim-{i}", cost=10) for i in range(victims)]
        finally:
            store.close()

    fresh = await trio.to_thread.run_sync(create)
    relay = await trio.to_thread.run_sync(launch.relay)  # default cost 12 for unknown IDs
    statuses: list = []

    async def wrong_hellos() -> None:
        async def one() -> None:
            statuses.append(
                await login(
                    relay.agent_port, str(uuid.uuid4()), uuid.uuid4().hex, source=attacker(2)
                )
            )

        while True:  # 240 at once, again every 3 s
            async with trio.open_nursery() as wave:
                for _ in range(240):
                    wave.start_soon(one)
                await trio.sleep(3)

    started = time.monotonic()
    nursery.start_soon(wrong_hellos)
    await trio.sleep(1)
    results = []
    for bridge_id, secret in fresh:
        results.append(await login(relay.agent_port, bridge_id, secret, deadline=10))
    elapsed = time.monotonic() - started
    nursery.cancel_scope.cancel()
    ok = results.count(WelcomeStatus.OK)
    checked = statuses.count(WelcomeStatus.AUTH_FAILED)  # each one a bcrypt check
    bound = 10 + math.ceil(elapsed / 6) + 1  # the default budget: 10 at once, one per 6 s
    report(
        f"victim uncached logins: {ok}/{len(results)} succeeded; attacker: {len(statuses)} "
        f"wrong Hellos answered in {elapsed:.1f} s, {checked} of them bcrypt-checked "
        f"(bound {bound}), {statuses.count(WelcomeStatus.BUSY)} answered BUSY, "
        f"{statuses.count('timeout')} unanswered"
    )
    assert ok >= 0.95 * len(results)
    assert checked <= bound
    assert "timeout" not in statuses  # every Hello is answered, BUSY if nothing else


async def test_thousands_of_websocket_connections_stay_within_the_caps(
    launch: Launcher, bridge: Bridge, nursery: trio.Nursery
):
    listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            target,
            args=["--listen-ws", "127.0.0.1:0", "--handshake-timeout", "20"],
        )
    )
    ws_port = int(
        relay.process.wait_for(
            r"^agents \(WebSocket\): listening on 127\.0\.0\.1:(\d+)", stream="stdout"
        )[1]
    )
    pid = relay.process.popen.pid
    await trio.to_thread.run_sync(partial(launch.agent, relay, [target]))
    fds_before, rss_before = descriptors(pid), rss_kib(pid)

    # 100 upgrade and send a 1 MiB message each before any Hello; 3,000 more just connect.
    async with trio.open_nursery() as attack:
        big = []

        async def oversized() -> None:
            try:
                connection = await websocket_upgrade(attack, attacker(3), ws_port)
                with trio.move_on_after(3):
                    await connection.send_message(bytes(1024 * 1024))
                big.append(1)
            except (OSError, trio.BrokenResourceError, ConnectionClosed):
                pass
            await trio.sleep_forever()

        for _ in range(100):
            attack.start_soon(oversized)
        held = []
        for _ in range(3000):
            try:
                held.append(await connect_from(attacker(4), ws_port))
            except OSError:
                break
        with trio.move_on_after(8):
            while len(big) < 100:
                await trio.sleep(0.1)
        await trio.sleep(1)
        fds, rss = descriptors(pid), rss_kib(pid)
        ok = await _websocket_login(ws_port, bridge)
        report(
            f"relay during {len(held)} idle and {len(big)} oversized WebSocket connections: "
            f"{fds} descriptors ({fds_before} before), RSS grew {rss - rss_before} KiB; "
            f"victim WebSocket login: {ok}"
        )
        assert fds <= fds_before + MAX_PENDING + 16
        assert rss - rss_before < 48 * 1024
        attack.cancel_scope.cancel()
    for stream in held:
        stream.socket.close()

    # stop_accepting closes the WebSocket listener too, while open tunnels drain.
    async with await trio.open_tcp_stream("127.0.0.1", relay.forwards[target]) as tunnel:
        await tunnel.send_all(b"ping")
        assert await tunnel.receive_some() == b"ping"
        relay.process.popen.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(partial(relay.process.wait_for, r"\tStopping: no new agents"))
        with pytest.raises(OSError):
            await (await trio.open_tcp_stream("127.0.0.1", ws_port)).aclose()
        assert relay.process.poll() is None  # still draining the open tunnel
        report("after SIGTERM: the WebSocket listener refuses connections while tunnels drain")


async def _websocket_login(port: int, bridge: Bridge) -> bool:
    """A real agent logs in over WebSocket."""
    from bridge.agent.agent import Agent
    from bridge.transport.tls import client_ssl_context

    agent = Agent(
        f"wss://127.0.0.1:{port}",
        bridge.id,
        bridge.secret,
        ["127.0.0.1:1"],
        client_ssl_context(fingerprint=bridge.fingerprint),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        with trio.move_on_after(10):
            while not agent.sessions:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return bool(agent.sessions)


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


async def test_a_flood_of_dropped_connections_is_logged_in_bounded_lines(
    launch: Launcher, bridge: Bridge, nursery: trio.Nursery
):
    interval = 2
    relay = await trio.to_thread.run_sync(
        partial(launch.relay, env={"RELAY_LOG_INTERVAL": str(interval)})
    )
    opened = [0]
    started = time.monotonic()
    with trio.move_on_after(5):
        await hold_connections(
            20, attacker(5), relay.agent_port, opened, first=b"GET / HTTP/1.0\r\n\r\n", pause=0
        )
    elapsed = time.monotonic() - started
    await trio.sleep(interval + 1.5)  # the last summary
    log = relay.process.stderr()
    detailed = len(log_lines(log, "Connection dropped")) + len(log_lines(log, "Handshake refused"))
    summaries = len(log_lines(log, "Connections dropped before authentication"))
    counted = sum(dropped_by_reason(log).values())
    windows = math.ceil((elapsed + interval + 1.5) / interval) + 1
    report(
        f"{opened[0]} garbage connections in {elapsed:.1f} s: {detailed} lines one by one, "
        f"{summaries} summary lines, {counted} drops counted"
    )
    assert detailed <= 5 * windows and summaries <= windows
    assert counted >= 0.9 * opened[0]
    [first, *_] = log_lines(log, "Connections dropped before authentication")
    assert attacker(5) in first["sources"]


async def test_proxy_headers_are_taken_from_trusted_balancers_only(
    launch: Launcher, bridge: Bridge
):
    balancer, stranger = attacker(6), attacker(7)
    relay = await trio.to_thread.run_sync(
        partial(
            launch.relay,
            env={"RELAY_PROXY_PROTOCOL": f"{balancer}/32", "RELAY_LOG_INTERVAL": "1"},
        )
    )
    port, id_, secret = relay.agent_port, bridge.id, bridge.secret
    v1 = encode_proxy_header(("203.0.113.7", 40001), ("192.0.2.1", 4000), version=1)
    v2 = encode_proxy_header(("2001:db8::7", 40002), ("2001:db8::1", 4000))
    accepted = {
        "v1 from the balancer": await login(port, id_, secret, source=balancer, prefix=v1),
        "v2 from the balancer": await login(port, id_, secret, source=balancer, prefix=v2),
        "v2 LOCAL (health check)": await login(
            port, id_, secret, source=balancer, prefix=encode_proxy_header(None)
        ),
        "no header from elsewhere": await login(port, id_, secret, source=VICTIM),
    }
    refused = {
        "v1 from an untrusted address": await login(port, id_, secret, source=stranger, prefix=v1),
        "v2 from an untrusted address": await login(port, id_, secret, source=stranger, prefix=v2),
        "no header from the balancer": await login(port, id_, secret, source=balancer),
        "garbage v1": await login(
            port, id_, secret, source=balancer, prefix=b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n"
        ),
        "v1 without CRLF": await login(port, id_, secret, source=balancer, prefix=b"PROXY " * 30),
        "v2 of family UDP": await login(
            port, id_, secret, source=balancer, prefix=v2[:13] + b"\x22" + v2[14:]
        ),
    }
    report(f"accepted: {accepted}\nrefused: {refused}")
    assert all(status == WelcomeStatus.OK for status in accepted.values())
    assert all(status != WelcomeStatus.OK for status in refused.values())
    log = relay.process.stderr()
    peers = [fields["peer"] for fields in log_lines(log, "Bridge connected")]
    assert peers[:2] == ["203.0.113.7:40001", "[2001:db8::7]:40002"]
    assert peers[2].startswith(f"{balancer}:") and peers[3].startswith(f"{VICTIM}:")
    await trio.sleep(2)  # the summary of the drops
    reasons = dropped_by_reason(relay.process.stderr())
    assert matching(reasons, lambda r: "address not trusted" in r) == 2
    assert matching(reasons, lambda r: r.startswith("malformed PROXY header")) == 4


async def test_stalled_connections_are_closed_when_they_give_up_their_slot(
    launch: Launcher, bridge: Bridge
):
    """The connections that lose their slot to another address are closed at once, not left
    open until their deadline."""
    relay = await trio.to_thread.run_sync(
        partial(launch.relay, args=["--max-pending", "4", "--handshake-timeout", "30"])
    )
    stalled = [await connect_from(attacker(8), relay.agent_port) for _ in range(4)]
    await trio.sleep(0.5)
    with trio.fail_after(10):
        assert await login(relay.agent_port, bridge.id, bridge.secret) == WelcomeStatus.OK
        await closed_by_peer(stalled[0])  # the oldest gave its slot
    for stream in stalled:
        stream.socket.close()
