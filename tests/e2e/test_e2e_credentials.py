# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bridge credentials: creating, refusing wrong ones, rotating, and deleting a live bridge."""

from __future__ import annotations

import re
import secrets
import uuid

import pytest

from .e2e_support import (
    Bridge,
    Launcher,
    Postgres,
    long_query,
    parse_assignments,
    relay_cli,
    wait_until_running,
)

EX_CONFIG = 78
REJECTED = "Relay rejected the bridge credentials"
# `bridges delete` closes the bridge's live tunnel within this many seconds (the promise made
# to users; measured from the end of the command).
CUT_DEADLINE = 2.0


def test_bridges_create_and_list(bridge: Bridge):
    created = relay_cli(bridge.data_dir, "bridges", "create", "second", "--bcrypt-cost", "4")

    assert created.returncode == 0, created.stderr
    assert [line.split("=", 1)[0] for line in created.stdout.splitlines()] == [
        "BRIDGE_ID",
        "BRIDGE_SECRET",
    ]
    credentials = parse_assignments(created.stdout)
    uuid.UUID(credentials["BRIDGE_ID"])
    assert len(credentials["BRIDGE_SECRET"]) >= 43  # 32 random bytes
    assert "again" in created.stderr  # the secret cannot be shown again
    listed = relay_cli(bridge.data_dir, "bridges", "list")
    assert listed.returncode == 0, listed.stderr
    for name, bridge_id in ((bridge.name, bridge.id), ("second", credentials["BRIDGE_ID"])):
        assert name in listed.stdout and bridge_id in listed.stdout
    assert credentials["BRIDGE_SECRET"] not in listed.stdout + listed.stderr


@pytest.mark.parametrize("wrong", ["secret", "id"])
def test_wrong_credentials_are_refused(launch: Launcher, bridge: Bridge, wrong: str):
    relay = launch.relay()
    wrong_secret = secrets.token_urlsafe(32)
    credentials = (
        {"BRIDGE_SECRET": wrong_secret} if wrong == "secret" else {"BRIDGE_ID": str(uuid.uuid4())}
    )

    agent = launch.agent(relay, ["127.0.0.1:5432"], wait=False, **credentials)

    assert agent.wait() == EX_CONFIG
    assert re.search(rf"\t{REJECTED}: \S", agent.stderr())
    relay.process.wait_for(r"\tWARNING\tAuthentication failed")
    logs = launch.logs()
    assert bridge.secret not in logs and wrong_secret not in logs


def test_rotate_replaces_the_secret(launch: Launcher, bridge: Bridge):
    relay = launch.relay()

    rotated = relay_cli(bridge.data_dir, "bridges", "rotate", bridge.id)  # by ID, or by name

    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("BRIDGE_SECRET=")
    new_secret = parse_assignments(rotated.stdout)["BRIDGE_SECRET"]
    assert new_secret != bridge.secret
    assert launch.agent(relay, ["127.0.0.1:5432"], wait=False).wait() == EX_CONFIG
    launch.agent(relay, ["127.0.0.1:5432"], BRIDGE_SECRET=new_secret)  # connects
    assert new_secret not in launch.logs()


@pytest.mark.interop
def test_delete_cuts_the_live_tunnel(postgres: Postgres, launch: Launcher, bridge: Bridge):
    relay, agent = launch.tunnel([postgres.target])
    forward = relay.forwards[postgres.target]
    query = long_query(30)
    live = launch.start("psql", postgres.psql_argv(query, port=forward), env=postgres.env)
    wait_until_running(postgres, query)

    deleted = relay_cli(bridge.data_dir, "bridges", "delete", "--yes", bridge.name)

    assert deleted.returncode == 0, deleted.stderr
    assert live.wait(CUT_DEADLINE) != 0  # psql: server closed the connection
    # The agent is cut off too (it stops, at once or when reconnecting is refused), and its
    # credentials are refused from now on.
    assert agent.wait() != 0
    assert postgres.psql("select 1", port=forward).returncode != 0
    assert launch.agent(relay, [postgres.target], wait=False).wait() == EX_CONFIG
    relay.process.wait_for(r"\tWARNING\tAuthentication failed")
