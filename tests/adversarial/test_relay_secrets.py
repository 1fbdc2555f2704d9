# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What a real relay keeps on disk, attacked: the certificate lock file is private and a
lock held by someone else fails the command instead of hanging it; a bridge's bcrypt cost is
raised to the relay's at its next login; unknown bridge IDs take as long to refuse as the
slowest known one (no ID oracle)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import statistics
import subprocess
import time
import uuid

import trio

from bridge.protocol.handshake import WelcomeStatus

from ..e2e.e2e_support import RELAY, clean_env, relay_cli
from .quota_support import ATTACKER, VICTIM, add_bridge, echo, login, round_trip, tracebacks

LOCK = ".certificate.lock"


def lock_mode(data_dir) -> int:
    return stat.S_IMODE(os.stat(data_dir / LOCK).st_mode)


def test_the_certificate_lock_is_private_and_never_blocks_forever(tmp_path):
    data_dir = tmp_path / "relay-data"
    created = relay_cli(data_dir, "bridges", "create", "b", "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    assert lock_mode(data_dir) == 0o600

    # A lock file made world-readable (as older versions did) and held by another process
    # while a new data dir's certificate is to be made.
    other = tmp_path / "other-data"
    other.mkdir(mode=0o700)
    (other / LOCK).touch(mode=0o644)
    os.chmod(other / LOCK, 0o644)
    with open(other / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        try:
            blocked = subprocess.run(
                [RELAY, "--data-dir", str(other), "bridges", "create", "b", "--bcrypt-cost", "4"],
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "bridge-relay fingerprint still waits for the lock after 20 s"
            ) from None
        waited = time.monotonic() - started
    print(
        f"\nlock held elsewhere: exit {blocked.returncode} after {waited:.1f} s: "
        f"{blocked.stderr.strip()}"
    )
    assert blocked.returncode == 1
    assert "has held" in blocked.stderr and LOCK in blocked.stderr
    assert blocked.stderr.count("\n") == 1 and "Traceback" not in blocked.stderr
    assert (
        relay_cli(other, "bridges", "create", "b", "--bcrypt-cost", "4").returncode == 0
    )  # released: it goes on
    assert lock_mode(other) == 0o600


def stored_cost(data_dir, bridge_id: str) -> int:
    with sqlite3.connect(data_dir / "bridges.db") as db:
        (hashed,) = db.execute(
            "SELECT secret_hash FROM bridges WHERE id = ?", (bridge_id,)
        ).fetchone()
    return int(hashed[4:6])


async def test_a_bridge_is_rehashed_at_the_relays_cost_at_login(launch, bridge, nursery):
    listeners = await nursery.start(trio.serve_tcp, echo, 0)
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    before = stored_cost(bridge.data_dir, bridge.id)
    relay = await trio.to_thread.run_sync(lambda: launch.relay(target, args=["--bcrypt-cost", "6"]))
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    relay.process.wait_for(r"\tBridge secret rehashed at the relay's bcrypt cost\t")
    after = stored_cost(bridge.data_dir, bridge.id)
    await trio.sleep(1.5)  # the relay has seen its own change to the store by now
    assert await round_trip(relay.forwards[target], VICTIM)
    log = relay.process.stderr()
    print(f"\nstored bcrypt cost: {before} before the login, {after} after")
    assert (before, after) == (4, 6)
    assert "Bridge disconnected" not in log  # a rehash is not a rotation
    # The same secret still logs in; a second agent needs no rehash.
    await trio.to_thread.run_sync(launch.agent, relay, [target])
    assert relay.process.stderr().count("rehashed") == 1
    assert tracebacks(log) == 0
    nursery.cancel_scope.cancel()


async def test_unknown_ids_take_as_long_as_the_slowest_known_one(launch, bridge, nursery):
    slow_id, _ = await trio.to_thread.run_sync(lambda: add_bridge(bridge.data_dir, "slow", cost=11))
    relay = await trio.to_thread.run_sync(lambda: launch.relay(args=["--bcrypt-cost", "4"]))

    async def refusal_time(bridge_id: str, source: str) -> float:
        started = time.monotonic()
        welcome, tls = await login(relay.agent_port, bridge_id, "not-the-secret", source)
        await trio.aclose_forcefully(tls)
        assert welcome.status == WelcomeStatus.AUTH_FAILED
        return time.monotonic() - started

    await refusal_time(str(uuid.uuid4()), VICTIM)  # the dummy hash is made at first use
    known = [await refusal_time(slow_id, ATTACKER) for _ in range(3)]
    unknown = [await refusal_time(str(uuid.uuid4()), VICTIM) for _ in range(3)]
    ratio = statistics.median(unknown) / statistics.median(known)
    print(
        f"\nwrong secret, median of 3: known ID (cost 11) "
        f"{statistics.median(known) * 1000:.0f} ms, "
        f"unknown ID {statistics.median(unknown) * 1000:.0f} ms (ratio {ratio:.2f})"
    )
    assert 0.4 < ratio < 2.5
    nursery.cancel_scope.cancel()
