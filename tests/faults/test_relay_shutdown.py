# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Stopping a real `bridge-relay serve`: SIGTERM stops accepting, lets open tunnels finish
within the drain timeout and exits 0; a second signal ends at once; systemd is told READY,
WATCHDOG and STOPPING."""

from __future__ import annotations

import re
import signal
from functools import partial

import pytest
import trio

from ..e2e.e2e_support import RELAY, Launcher, Relay, clean_env
from .traffic import echo, systemd_socket, transfer_while


async def start(launch: Launcher, nursery, *args: str, **env: str) -> tuple[Relay, int]:
    """An echo target, a relay forwarding to it (with `env`), a connected agent."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    argv = [
        RELAY,
        "--data-dir",
        launch.bridge.data_dir,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--forward",
        f"{launch.bridge.name}={target}",
        *args,
    ]
    process = launch.start("relay", argv, env=clean_env(**env))
    agents = await trio.to_thread.run_sync(
        partial(process.wait_for, r"^agents: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")
    )
    forward = await trio.to_thread.run_sync(
        partial(process.wait_for, r"^forward .*: listening on 127\.0\.0\.1:(\d+)$", stream="stdout")
    )
    relay = Relay(process, int(agents[1]), {target: int(forward[1])})
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    return relay, int(forward[1])


async def refused(port: int) -> bool:
    try:
        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
    except OSError:
        return True
    return False


async def test_sigterm_drains_open_tunnels_and_tells_systemd(launch, nursery, tmp_path):
    async with systemd_socket(tmp_path) as (path, messages):
        relay, forward = await start(
            launch, nursery, "--drain-timeout", "20", NOTIFY_SOCKET=path, WATCHDOG_USEC="200000"
        )

        async def stop() -> None:
            relay.process.popen.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                while not await refused(forward):  # no new connections...
                    await trio.sleep(0.05)
            assert await trio.to_thread.run_sync(relay.process.wait, 25) == 0

        # ...while the open one finished
        assert await transfer_while(forward, 6 * 1024 * 1024, stop) == "complete"
    assert messages[0].startswith("READY=1\nSTATUS=Listening for agents on 127.0.0.1:")
    assert messages.count("WATCHDOG=1") >= 2
    # (1, or 2 when the first probe for a closed listener got in before the signal)
    # The agent moves (to no other node here: it lets go once its tunnel is done).
    stopping = (
        r"STOPPING=1\nSTATUS=Draining: waiting for 1 agent to move to other nodes and "
        r"[12] open tunnels"
    )
    assert any(re.fullmatch(stopping, m) for m in messages), messages
    log = relay.process.stderr()
    assert "\tINFO\tDrained: no tunnel is open" in log and "Traceback" not in log


@pytest.mark.parametrize("how", ["second signal", "drain timeout"])
async def test_stopping_does_not_wait_forever(launch, nursery, how):
    timeout = "1" if how == "drain timeout" else "60"
    relay, forward = await start(launch, nursery, "--drain-timeout", timeout)

    async def stop() -> None:
        relay.process.popen.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(relay.process.wait_for, r"\tStopping: no new agents")
        if how == "second signal":
            relay.process.popen.send_signal(signal.SIGTERM)
        # Tunnels were cut: exit status 1, as the agent does, stated on the last line.
        assert await trio.to_thread.run_sync(relay.process.wait, 15) == 1

    with trio.fail_after(30):
        assert await transfer_while(forward, 1 << 40, stop) != "complete"
    log = relay.process.stderr()
    expected = "\tStopping now\t" if how == "second signal" else "Drain timed out after 1 s"
    assert expected in log and "Traceback" not in log, log
    assert re.search(r"\tERROR\tStopped with \d+ tunnels cut: exit status 1\n$", log), log
    assert re.search(r"\tBridge disconnected\t.*relay shutting down", log), log
