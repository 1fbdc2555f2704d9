# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""psql reaching a real PostgreSQL server through `bridge-relay serve --forward` and an agent."""

from __future__ import annotations

import re

import pytest

from .e2e_support import Bridge, Launcher, Postgres, free_port, relay_cli

pytestmark = pytest.mark.interop

LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t(DEBUG|INFO|WARNING|ERROR)\t[^\t]+(\t\{.*\})?"
)


def not_allowed(target: str) -> str:
    return f"Host not in allowed hosts list: {target}"


def test_query_through_forward(postgres: Postgres, launch: Launcher, bridge: Bridge):
    relay, agent = launch.tunnel([postgres.target])

    result = postgres.psql("select 1", port=relay.forwards[postgres.target])

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"1\n"
    assert (
        f'\tConnecting to the relay\t{{"address": "127.0.0.1:{relay.agent_port}"}}'
        in agent.stderr()
    )
    for process in (relay.process, agent):
        bad = [line for line in process.stderr().splitlines() if not LOG_LINE.fullmatch(line)]
        assert not bad, f"{process.name} log lines not in the documented format: {bad}"
    assert bridge.secret not in launch.logs()


@pytest.mark.parametrize(
    "sql",
    [
        "select string_agg(md5(i::text), '') from generate_series(1, 200000) i",
        "copy (select i, md5(i::text), repeat(chr(65 + i % 26), i % 61) from "
        "generate_series(1, 150000) i) to stdout",
    ],
    ids=["one-big-value", "many-rows"],
)
def test_multi_megabyte_result_is_identical(postgres: Postgres, launch: Launcher, sql: str):
    relay, _ = launch.tunnel([postgres.target])

    postgres.check_same_result(sql, relay.forwards[postgres.target])


def test_target_outside_allow_list_is_refused(postgres: Postgres, launch: Launcher):
    blocked = f"127.0.0.1:{free_port()}"
    relay, agent = launch.tunnel([postgres.target, blocked], allow=[postgres.target])

    refused = postgres.psql("select 1", port=relay.forwards[blocked])

    assert refused.returncode != 0
    agent.wait_for(re.escape(not_allowed(blocked)))
    relay.process.wait_for(re.escape(not_allowed(blocked)))
    # The agent keeps serving.
    allowed = postgres.psql("select 2", port=relay.forwards[postgres.target])
    assert (allowed.returncode, allowed.stdout) == (0, b"2\n"), allowed.stderr
    assert agent.poll() is None


def test_relay_test_command(postgres: Postgres, launch: Launcher, bridge: Bridge):
    blocked = f"127.0.0.1:{free_port()}"
    launch.tunnel([], allow=[postgres.target])

    reachable = relay_cli(bridge.data_dir, "test", bridge.name, postgres.target)
    refused = relay_cli(bridge.data_dir, "test", bridge.name, blocked)

    assert reachable.returncode == 0, reachable.stderr
    assert reachable.stdout.startswith("OK")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert not_allowed(blocked) in refused.stdout + refused.stderr
