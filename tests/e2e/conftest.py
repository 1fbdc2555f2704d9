# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Fixtures for the end-to-end tests: PostgreSQL, a relay data dir with a bridge, and a
launcher that starts `bridge-relay serve` and `bridge-agent` the way a user runs them."""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from .e2e_support import Postgres, Process, clean_env, free_port
from .process_fixtures import (  # noqa: F401 (fixtures and hooks, shared with tests/faults)
    bridge,
    launch,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)


@pytest.fixture(scope="session", autouse=True)
def _tear_down_on_sigterm() -> Iterator[None]:
    """`timeout` and CI runners stop pytest with SIGTERM: tear the fixtures down (and so stop
    every process they started) as on Ctrl-C, instead of leaving servers running."""

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- PostgreSQL --------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (end-to-end tests may not skip when CI=true)")
    pytest.skip(reason)


def _postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/VERSION/bin that has a server."""

    def version(server: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", server.parent.parent.name))

    servers = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version)
    return servers[-1].parent if servers else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    bin_dir = _postgres_bin_dir()
    psql = shutil.which("psql")
    if bin_dir is None:
        _unavailable("no PostgreSQL server in /usr/lib/postgresql (Debian package postgresql)")
    if psql is None:
        _unavailable("the psql client is missing (Debian package postgresql-client)")
    # PostgreSQL refuses to run as root: then the server runs as the postgres system user, in
    # a directory of its own (pytest's temporary directories are private to root).
    as_user = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres system user to run PostgreSQL")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="trio-bridge-pg-"))
    server = None
    try:
        if as_user:
            os.chown(root, as_user["user"], as_user["group"])
        data = root / "data"
        initdb = subprocess.run(
            [
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            **as_user,
        )
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}{initdb.stderr}"
        port = free_port()
        server = Process(
            "postgres",
            [
                bin_dir / "postgres",
                "-D",
                data,
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-k",
                root,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            tmp_path_factory.mktemp("postgres-logs"),
            cwd=root,
            **as_user,
        )
        server.wait_for("database system is ready to accept connections", timeout=60)
        yield Postgres(psql, port)
    finally:
        if server is not None:
            server.stop(first=signal.SIGINT)  # fast shutdown: ends open sessions
        shutil.rmtree(root, ignore_errors=True)


# -- TCP servers in the test -------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
async def tcp_server(nursery: trio.Nursery) -> Callable[[Handler], Awaitable[str]]:
    """Starts a server on 127.0.0.1 running `handler` per connection; returns its HOST:PORT."""

    async def start(handler: Handler) -> str:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    return start
