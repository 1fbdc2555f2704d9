# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Every async test runs under a deadline, so that a hang fails one test instead of the run;
and one PostgreSQL server for the whole run, for the folders whose tests need one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator

import pytest
import trio

#: Seconds per async test, by the folder it is in; the others get DEFAULT_TIME_LIMIT.
TIME_LIMITS = {"mux": 20, "bridge": 20, "plugin": 30, "faults": 90}
DEFAULT_TIME_LIMIT = 60


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
