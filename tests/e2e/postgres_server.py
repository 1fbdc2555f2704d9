# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real PostgreSQL server for the tests (initdb and postgres from the Debian package), on
127.0.0.1 and a free port; it can be stopped and started again on the same port.

Used by the session-wide `postgres` fixture (tests/conftest.py) and by tests that need a
server of their own (to stop it under a running relay)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from .e2e_support import Postgres, Process, clean_env, free_port


def unavailable(reason: str) -> None:
    """Skip, except under CI, where a missing server fails the test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (end-to-end tests may not skip when CI=true)")
    pytest.skip(reason)


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/VERSION/bin that has a server."""

    def version(server: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", server.parent.parent.name))

    servers = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version)
    return servers[-1].parent if servers else None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; `client` runs psql against it."""

    def __init__(self, log_dir: Path) -> None:
        self.bin_dir = _bin_dir()
        psql = shutil.which("psql")
        if self.bin_dir is None:
            unavailable("no PostgreSQL server in /usr/lib/postgresql (Debian package postgresql)")
        if psql is None:
            unavailable("the psql client is missing (Debian package postgresql-client)")
        # PostgreSQL refuses to run as root: then the server runs as the postgres system
        # user, in a directory of its own (pytest's temporary directories are private).
        self.as_user: dict = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no postgres system user")
            self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.log_dir = log_dir
        self.root = Path(tempfile.mkdtemp(prefix="trio-bridge-pg-"))
        self.port = free_port()
        self.client = Postgres(psql, self.port)
        self.process: Process | None = None
        if self.as_user:
            os.chown(self.root, self.as_user["user"], self.as_user["group"])
        initdb = subprocess.run(
            [
                self.bin_dir / "initdb",
                "-D",
                self.root / "data",
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            **self.as_user,
        )
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}{initdb.stderr}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        self.process = Process(
            "postgres",
            [
                self.bin_dir / "postgres",
                "-D",
                self.root / "data",
                "-h",
                "127.0.0.1",
                "-p",
                self.port,
                "-k",
                self.root,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            self.log_dir,
            cwd=self.root,
            **self.as_user,
        )
        self.process.wait_for("database system is ready to accept connections", timeout=60)

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended."""
        if self.process is not None:
            self.process.stop(first=signal.SIGINT)
            self.process = None

    def create_database(self) -> str:
        """A new empty database; its postgresql:// URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        done = self.client.psql(f"CREATE DATABASE {name}")
        assert done.returncode == 0, done.stderr
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
