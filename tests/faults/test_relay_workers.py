# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""`bridge-relay serve --workers 2`: a connection reaches the bridge whose session is on the
other worker (the worker without a session leaves forward and SOCKS clients to the one with
it; a SOCKS client accepted by a worker that holds another bridge is handed over); killed
workers are started again and no connection queued meanwhile is lost; SIGHUP replaces the
workers under load without failing a connection; SIGTERM drains every worker once and
exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
from functools import partial

import pytest
import trio

from ..adversarial.burst_support import socks_request
from ..e2e.e2e_support import (
    RELAY,
    Launcher,
    Relay,
    clean_env,
    log_lines,
    parse_assignments,
    relay_cli,
)
from .traffic import echo, load_around, outcome, systemd_socket, transfer, transfer_while

PAYLOAD = 4096


async def start(launch: Launcher, nursery, *args: str, **env: str) -> tuple[Relay, int, int, str]:
    """An echo target, a relay with 2 workers forwarding to it (and SOCKS, metrics), one
    connected agent: the relay, the forward's port, the metrics port, the target."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    argv = [
        RELAY,
        "--data-dir",
        launch.bridge.data_dir,
        "serve",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--bcrypt-cost",
        "4",
        "--forward",
        f"{launch.bridge.name}={target}",
        "--socks",
        "0",
        "--metrics",
        "0",
        *args,
    ]
    process = launch.start("relay", argv, env=clean_env(**env))

    def printed(what: str) -> int:
        pattern = rf"^{what}: listening on 127\.0\.0\.1:(\d+)$"
        return int(process.wait_for(pattern, stream="stdout")[1])

    agents = await trio.to_thread.run_sync(printed, "agents")
    forward = await trio.to_thread.run_sync(printed, r"forward .*")
    socks = await trio.to_thread.run_sync(printed, "socks")
    metrics = await trio.to_thread.run_sync(printed, "metrics")
    await trio.to_thread.run_sync(partial(process.wait_for, r"\tWorkers serving\t"))
    relay = Relay(process, agents, {target: forward, "socks": socks})
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    return relay, forward, metrics, target


def workers(relay: Relay) -> dict[int, int]:
    """Worker index -> pid of the worker serving in that slot now."""
    return {f["worker"]: f["pid"] for f in log_lines(relay.process.stderr(), "Worker serving")}


def holder(relay: Relay) -> int:
    """The worker the agent's session is on, as last logged."""
    return log_lines(relay.process.stderr(), "Bridge connected")[-1]["worker"]


async def scrape(port: int) -> str:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.decode()


def handovers(text: str, direction: str) -> int:
    pattern = rf'^trio_bridge_handovers_total\{{worker="\d+",direction="{direction}"\}} (\d+)$'
    return sum(int(m[1]) for m in re.finditer(pattern, text, re.MULTILINE))


async def through_socks(port: int, bridge: str, target: str) -> bool:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await socks_request(stream, bridge, target)
        payload = os.urandom(PAYLOAD)
        await stream.send_all(payload)
        data = bytearray()
        while len(data) < PAYLOAD and (chunk := await stream.receive_some(PAYLOAD)):
            data += chunk
    return bytes(data) == payload


async def socks_outcome(port: int, bridge: str, target: str) -> str:
    """`outcome` of one exchange through the SOCKS port `port`: "ok", "short", "hung" (not
    done within 20 s) or the error (a refusal included)."""
    result = "hung"
    try:
        with trio.move_on_after(20):
            result = "ok" if await through_socks(port, bridge, target) else "short"
    except* (OSError, trio.BrokenResourceError, AssertionError) as group:
        result = f"error: {group.exceptions[0]!r}"
    return result


async def test_the_worker_without_a_session_leaves_forward_and_socks_clients_to_the_other(
    launch, nursery
):
    """The worker without any session leaves the forward's connections and the SOCKS
    clients in the backlog for the one with the agent's session: once it has heard where
    the session is, nothing is handed over, and every tunnel runs in the holder."""
    relay, forward, metrics, target = await start(launch, nursery)
    with trio.fail_after(60):
        # The other worker hears of the session within a packet from the parent; the first
        # connections may be accepted before it has.
        for _ in range(10):
            assert await transfer(forward, PAYLOAD)
            assert await through_socks(relay.forwards["socks"], launch.bridge.name, target)
        settled = handovers(await scrape(metrics), "out")
        for _ in range(30):
            assert await transfer(forward, PAYLOAD)
            assert await through_socks(relay.forwards["socks"], launch.bridge.name, target)
    text = await scrape(metrics)
    assert handovers(text, "out") == settled, text
    other = 1 - holder(relay)
    assert re.search(rf'^trio_bridge_streams_total\{{worker="{other}",', text, re.M) is None
    assert re.search(r"^trio_bridge_workers_serving 2$", text, re.M), text
    assert "Traceback" not in relay.process.stderr()


async def test_a_socks_client_is_handed_to_the_worker_of_its_bridge(launch, nursery):
    """Two bridges, each agent on its own worker: a SOCKS client accepted by one worker for
    the other's bridge is handed over (its request with it) and tunneled there."""
    created = relay_cli(launch.bridge.data_dir, "bridges", "create", "second", "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    second = parse_assignments(created.stdout)
    relay, _, metrics, target = await start(launch, nursery)
    first = holder(relay)
    # Which worker accepts an agent is the kernel's choice: start the second bridge's agent
    # again until it lands on the other worker (bounded).
    for attempt in range(1, 13):
        agent = launch.agent(
            relay,
            [target],
            wait=False,
            BRIDGE_ID=second["BRIDGE_ID"],
            BRIDGE_SECRET=second["BRIDGE_SECRET"],
        )
        connected = await trio.to_thread.run_sync(
            partial(
                relay.process.wait_for,
                r'\tBridge connected\t(\{.*"second".*\})$',
                count=attempt,
            )
        )
        if json.loads(connected[1])["worker"] != first:
            break
        agent.stop(signal.SIGTERM)
    else:
        pytest.fail("the second agent landed on the first one's worker 12 times")
    socks = relay.forwards["socks"]
    with trio.fail_after(60):
        for _ in range(200):
            assert await through_socks(socks, launch.bridge.name, target)
            assert await through_socks(socks, "second", target)
            text = await scrape(metrics)
            out = [_handovers_of(text, worker, "out") for worker in (0, 1)]
            if min(out) >= 2:
                break
    text = await scrape(metrics)
    assert handovers(text, "in") == handovers(text, "out")
    assert min(_handovers_of(text, worker, "out") for worker in (0, 1)) >= 2, text
    # Every bridge's tunnels ran in the worker that holds its session.
    for worker, bridge in ((first, launch.bridge.name), (1 - first, "second")):
        assert (
            re.search(
                rf'^trio_bridge_streams_total\{{worker="{1 - worker}",bridge="{bridge}"\}}',
                text,
                re.M,
            )
            is None
        ), text
    assert "Traceback" not in relay.process.stderr()


def _handovers_of(text: str, worker: int, direction: str) -> int:
    pattern = rf'^trio_bridge_handovers_total\{{worker="{worker}",direction="{direction}"\}} (\d+)$'
    found = re.search(pattern, text, re.M)
    return int(found[1]) if found else 0


async def test_killed_workers_are_started_again_and_queued_connections_served(launch, nursery):
    relay, forward, _, _ = await start(launch, nursery)
    before = workers(relay)
    for pid in before.values():  # the one with the agent's session, and the other
        os.kill(pid, signal.SIGKILL)
    # Until a worker is back these wait in the listen backlog (and the agent reconnects).
    results: list[str] = []

    async def run() -> None:
        results.append(await outcome(forward))

    with trio.fail_after(40):
        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(run)
                await trio.sleep(0.02)
    assert results == ["ok"] * 20
    # Both were started again (the one that comes up first may have served them all).
    await trio.to_thread.run_sync(partial(relay.process.wait_for, r"\tWorker serving\t", count=4))
    log = relay.process.stderr()
    restarted = log_lines(log, "Worker exited: starting it again in")
    assert sorted(f["worker"] for f in restarted) == [0, 1]
    assert all(f["status"] == "SIGKILL" for f in restarted)
    after = workers(relay)
    assert set(after) == {0, 1} and not set(after.values()) & set(before.values())
    assert relay.process.poll() is None and "Traceback" not in log


async def test_sighup_replaces_the_workers_under_load_and_fails_no_connection(launch, nursery):
    """Forward and SOCKS connections alternate: while the worker with the agent's session
    drains, the other (without one) takes the SOCKS clients again, and they wait for the
    agent's new session as the forward's do."""
    relay, forward, _, target = await start(launch, nursery)
    before = workers(relay)
    reloaded = partial(
        trio.to_thread.run_sync,
        partial(relay.process.wait_for, r"\tReloaded: every worker replaced\t", timeout=60),
    )

    async def either(n: int) -> str:
        if n % 2:
            return await socks_outcome(relay.forwards["socks"], launch.bridge.name, target)
        return await outcome(forward)

    with trio.fail_after(90):
        sighup = partial(relay.process.popen.send_signal, signal.SIGHUP)
        results = await load_around(forward, sighup, reloaded, each=either)
    assert len(results) > 75
    assert results == ["ok"] * len(results), [r for r in results if r != "ok"][:3]
    after = workers(relay)
    assert set(after) == {0, 1} and not set(after.values()) & set(before.values())
    for pid in before.values():  # the old workers drained and exited
        with trio.fail_after(30):
            while _state(pid) not in ("gone", "Z"):
                await trio.sleep(0.1)
    log = relay.process.stderr()
    assert "Traceback" not in log and "Worker exited: starting it again" not in log


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize("to", ["parent", "process group"])
async def test_sigterm_drains_every_worker_once_and_exits_0(launch, nursery, tmp_path, to):
    async with systemd_socket(tmp_path) as (path, messages):
        relay, forward, _, _ = await start(
            launch, nursery, "--drain-timeout", "20", NOTIFY_SOCKET=path, WATCHDOG_USEC="400000"
        )
        pids = workers(relay)

        async def stop() -> None:
            if to == "parent":  # as systemd does with KillMode=mixed
                relay.process.popen.send_signal(signal.SIGTERM)
            else:  # every process: the workers count their own and the parent's as one
                os.killpg(relay.process.popen.pid, signal.SIGTERM)
            assert await trio.to_thread.run_sync(relay.process.wait, 40) == 0

        # The open tunnel finished.
        assert await transfer_while(forward, 4 * 1024 * 1024, stop) == "complete"
    for pid in pids.values():
        assert _state(pid) == "gone"
    log = relay.process.stderr()
    assert len(log_lines(log, "Drained: no tunnel is open")) == 2
    assert "Workers stopped" in log and "Traceback" not in log and "Stopping now" not in log
    # Only the parent spoke to systemd: one READY once both workers served.
    ready = [m for m in messages if m.startswith("READY=1")]
    assert ready == ["READY=1\nSTATUS=2 workers serving"], messages
    assert messages.count("WATCHDOG=1") >= 2
    assert any(m.startswith("STOPPING=1") for m in messages)
