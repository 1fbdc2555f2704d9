# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures of the fault tests: real `bridge-relay` and `bridge-agent` processes (started with
tests/e2e's helpers), and a fault-injecting proxy between them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))

from e2e_support import BRIDGE_NAME, Bridge, Launcher, parse_assignments, relay_cli, started  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402


_FIRST_PROCESS = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    item.stash[_FIRST_PROCESS] = len(started)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failing test's report shows the output of the processes it started."""
    report = yield
    if report.failed:
        for process in started[item.stash.get(_FIRST_PROCESS, 0):]:
            report.sections.extend(process.log_sections())
    return report


@pytest.fixture
def bridge(tmp_path: Path) -> Bridge:
    """A relay data dir with one bridge (cheap bcrypt), and the relay certificate's fingerprint."""
    data_dir = tmp_path / "relay-data"
    created = relay_cli(data_dir, "bridges", "create", BRIDGE_NAME, "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    credentials = parse_assignments(created.stdout)
    fingerprint = relay_cli(data_dir, "fingerprint")
    assert fingerprint.returncode == 0, fingerprint.stderr
    return Bridge(data_dir, BRIDGE_NAME, credentials["BRIDGE_ID"], credentials["BRIDGE_SECRET"],
                  fingerprint.stdout.strip())


@pytest.fixture
def launch(bridge: Bridge, tmp_path: Path) -> Iterator[Launcher]:
    """Starts relays and agents (`Launcher`); kills them all at the end of the test."""
    launcher = Launcher(bridge, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """``fault_proxy(upstream_port)``: a running `FaultProxy` to 127.0.0.1:upstream_port."""
    proxies: list[FaultProxy] = []

    def start(upstream_port: int) -> FaultProxy:
        proxies.append(FaultProxy(upstream_port).start())
        return proxies[-1]

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.close()
