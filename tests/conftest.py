# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Every async test runs under a deadline, so that a hang fails one test instead of the run;
one PostgreSQL server for the whole run, for the folders whose tests need one; and the
project's modules compiled once, for the hundreds of processes the suite starts."""

from __future__ import annotations

import compileall
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

#: Seconds per async test, by the folder it is in; the others get DEFAULT_TIME_LIMIT.
TIME_LIMITS = {"mux": 20, "bridge": 20, "plugin": 30, "faults": 90}
DEFAULT_TIME_LIMIT = 60

#: The packages whose modules the processes started by the suite import from the checkout.
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mux", "bridge", "relay", "bench", "tests")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write the bytecode of the checkout's modules (`__pycache__`, which git ignores), once.
    Where PYTHONDONTWRITEBYTECODE is set (as in many CI images), no process writes it, and
    every relay, agent and command the suite starts (hundreds) would compile the project
    again; a stale file is never used (Python checks the source's time and size)."""
    for package in PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            limit = TIME_LIMITS.get(item.path.parent.name, DEFAULT_TIME_LIMIT)
            item.obj = _bounded(item.obj, limit)


def _bounded(test, limit: float):
    @functools.wraps(test)
    async def bounded(*args, **kwargs):
        with trio.fail_after(limit):
            return await test(*args, **kwargs)

    return bounded


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A running `postgres_server.PostgresServer` (tests/e2e/postgres_server.py), shared by
    the run: tests that stop a server start one of their own."""
    from .e2e.postgres_server import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("postgres-logs"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres(postgres_server):
    """psql against the shared server (`e2e_support.Postgres`)."""
    return postgres_server.client


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The postgresql:// URL of a new, empty database of this test's own."""
    return postgres_server.create_database()
