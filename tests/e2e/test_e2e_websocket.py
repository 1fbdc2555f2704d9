# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""psql to a real PostgreSQL server through an agent that reaches the relay over WebSocket
(wss://), through an HTTP CONNECT proxy that requires Basic authentication."""

from __future__ import annotations

import base64
import sys

import pytest

from .e2e_support import ROOT, Bridge, Launcher, Postgres, Process, Relay

pytestmark = pytest.mark.interop

PROXY_USER, PROXY_PASSWORD = "tester", "proxy-password-5b1e9d"
BIG_RESULT = "select string_agg(md5(i::text), '') from generate_series(1, 200000) i"


@pytest.fixture
def proxy(launch: Launcher) -> tuple[Process, int]:
    """The tests' CONNECT proxy, requiring PROXY_USER and PROXY_PASSWORD; and its port."""
    runner = [sys.executable, "-m", "tests.e2e.run_connect_proxy", PROXY_USER, PROXY_PASSWORD]
    process = launch.start("proxy", runner, cwd=ROOT)
    return process, int(process.wait_for(r"^listening on (\d+)$", stream="stdout")[1])


def websocket_relay(launch: Launcher, target: str) -> tuple[Relay, int]:
    """A relay forwarding to `target` that also takes agents over WebSocket; and that port."""
    relay = launch.relay(target, args=["--listen-ws", "127.0.0.1:0", "--log-level", "DEBUG"])
    listening = relay.process.wait_for(
        r"^agents \(WebSocket\): listening on 127\.0\.0\.1:(\d+), path /bridge$", stream="stdout"
    )
    return relay, int(listening[1])


def proxy_env(port: int, no_proxy: str | None = None) -> dict[str, str | None]:
    """The agent's proxy variables (the lower-case ones, which would win, unset)."""
    return {
        "HTTPS_PROXY": f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}",
        "NO_PROXY": no_proxy,
        "https_proxy": None,
        "no_proxy": None,
    }


def test_psql_over_websocket_through_proxy(
    postgres: Postgres, launch: Launcher, bridge: Bridge, proxy: tuple[Process, int]
):
    proxy_process, proxy_port = proxy
    relay, ws_port = websocket_relay(launch, postgres.target)
    agent = launch.agent(
        relay,
        [postgres.target],
        RELAY_URL=f"wss://127.0.0.1:{ws_port}/bridge",
        LOG_LEVEL="DEBUG",
        **proxy_env(proxy_port),
    )
    forward = relay.forwards[postgres.target]

    query = postgres.psql("select 1", port=forward)
    assert (query.returncode, query.stdout) == (0, b"1\n"), query.stderr
    postgres.check_same_result(BIG_RESULT, forward)
    # One tunnel through the proxy, to the WebSocket listener, carried everything.
    assert proxy_process.stdout().splitlines() == [
        f"listening on {proxy_port}",
        f"CONNECT 127.0.0.1:{ws_port}",
        "tunnels 1",
    ]
    assert (
        f'\tConnecting to the relay\t{{"address": "127.0.0.1:{ws_port}", '
        f'"proxy": "127.0.0.1:{proxy_port}"}}'
    ) in agent.stderr()
    logs = launch.logs()
    basic = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    for secret in (bridge.secret, PROXY_PASSWORD, basic):
        assert secret not in logs


def test_no_proxy_connects_directly(
    postgres: Postgres, launch: Launcher, proxy: tuple[Process, int]
):
    proxy_process, proxy_port = proxy
    relay, ws_port = websocket_relay(launch, postgres.target)
    agent = launch.agent(
        relay,
        [postgres.target],
        RELAY_URL=f"wss://127.0.0.1:{ws_port}/bridge",
        **proxy_env(proxy_port, no_proxy="127.0.0.1"),
    )

    result = postgres.psql("select 1", port=relay.forwards[postgres.target])

    assert (result.returncode, result.stdout) == (0, b"1\n"), result.stderr
    assert proxy_process.stdout().splitlines() == [f"listening on {proxy_port}"]
    assert f'\tConnecting to the relay\t{{"address": "127.0.0.1:{ws_port}"}}' in agent.stderr()
