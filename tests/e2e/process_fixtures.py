# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures and report hooks shared by the folders whose tests run real relay and agent
processes (tests/e2e, tests/faults): their conftests import them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .e2e_support import BRIDGE_NAME, Bridge, Launcher, parse_assignments, relay_cli, started

_FIRST_PROCESS = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    item.stash[_FIRST_PROCESS] = len(started)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        first = item.stash.get(_FIRST_PROCESS, 0)
        for index, process in enumerate(started):
            if index >= first or process.poll() is None:
                report.sections.extend(process.log_sections())
    return report


@pytest.fixture
def bridge(tmp_path: Path) -> Bridge:
    """A relay data dir with one bridge, and the fingerprint of the relay's certificate."""
    return create_bridge(tmp_path)


def create_bridge(tmp_path: Path, *store: str) -> Bridge:
    """`bridges create` in a new data dir (with `store`, e.g. ``--store URL``, before the
    subcommand), and the fingerprint of the relay's certificate made there."""
    data_dir = tmp_path / "relay-data"
    created = relay_cli(data_dir, *store, "bridges", "create", BRIDGE_NAME, "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    credentials = parse_assignments(created.stdout)
    fingerprint = relay_cli(data_dir, "fingerprint")
    assert fingerprint.returncode == 0, fingerprint.stderr
    return Bridge(
        data_dir,
        BRIDGE_NAME,
        credentials["BRIDGE_ID"],
        credentials["BRIDGE_SECRET"],
        fingerprint.stdout.strip(),
    )


@pytest.fixture
def launch(bridge: Bridge, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(bridge, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Launcher]:
    """A launcher whose bridge was created in a PostgreSQL store of this test's own
    (`postgres_url`), for `Launcher.node`."""
    launcher = Launcher(create_bridge(tmp_path, "--store", postgres_url), tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()
