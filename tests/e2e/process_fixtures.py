# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures and report hooks shared by the folders whose tests run real relay and agent
processes (tests/e2e, tests/faults): their conftests import them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
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


@pytest.fixture(scope="session")
def bridge_template(tmp_path_factory: pytest.TempPathFactory) -> Bridge:
    """A relay data dir made once per run by `bridges create` and `fingerprint`, which
    `bridge` copies: two commands fewer per test (each one a Python process to start)."""
    return create_bridge(tmp_path_factory.mktemp("bridge-template"))


@pytest.fixture
def bridge(bridge_template: Bridge, tmp_path: Path) -> Bridge:
    """A relay data dir with one bridge, and the fingerprint of the relay's certificate: a
    copy of `bridge_template` (the same bridge, secret and certificate in every test), in
    this test's own directory, so that what the test does to it stays there."""
    data_dir = tmp_path / "relay-data"
    shutil.copytree(bridge_template.data_dir, data_dir)
    return replace(bridge_template, data_dir=data_dir)


def create_bridge(tmp_path: Path, *store: str, certificate: Bridge | None = None) -> Bridge:
    """`bridges create` in a new data dir (with `store`, e.g. ``--store URL``, before the
    subcommand), and the fingerprint of the relay's certificate made there; or, given
    `certificate` (a `Bridge`), the certificate of its data dir, copied in first (one
    command fewer)."""
    data_dir = tmp_path / "relay-data"
    if certificate is not None:
        data_dir.mkdir(mode=0o700, parents=True)
        for name in ("relay.crt", "relay.key"):
            shutil.copy2(certificate.data_dir / name, data_dir / name)
    created = relay_cli(data_dir, *store, "bridges", "create", BRIDGE_NAME, "--bcrypt-cost", "4")
    assert created.returncode == 0, created.stderr
    credentials = parse_assignments(created.stdout)
    if certificate is not None:
        pinned = certificate.fingerprint
    else:
        fingerprint = relay_cli(data_dir, "fingerprint")
        assert fingerprint.returncode == 0, fingerprint.stderr
        pinned = fingerprint.stdout.strip()
    return Bridge(
        data_dir,
        BRIDGE_NAME,
        credentials["BRIDGE_ID"],
        credentials["BRIDGE_SECRET"],
        pinned,
    )


@pytest.fixture
def launch(bridge: Bridge, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(bridge, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def cluster(postgres_url: str, bridge_template: Bridge, tmp_path: Path) -> Iterator[Launcher]:
    """A launcher whose bridge was created in a PostgreSQL store of this test's own
    (`postgres_url`), for `Launcher.node`; the certificate is `bridge_template`'s."""
    bridge = create_bridge(tmp_path, "--store", postgres_url, certificate=bridge_template)
    launcher = Launcher(bridge, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()
