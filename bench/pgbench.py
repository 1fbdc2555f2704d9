# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A real client for ``python -m bench tunnel``: pgbench (PostgreSQL's own benchmark, built-in
select-only script) against one PostgreSQL, through each path.

Two cases: 16 steady connections (``-S -c 16``), and a new connection per transaction
(``-S -C -c 8``); both with 2 threads (``-j 2``), no vacuum (``-n``), scale 1. The server is a
throwaway cluster started for the run (tests/e2e/postgres_server.py: initdb into a temporary
directory, fsync off, trust authentication on 127.0.0.1), or an existing one given by URL.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from bench.clients import Failed
from bench.paths import HOST, SkipPath
from bench.procs import run_command

CASES = {  # metric key -> (clients, a new connection per transaction)
    "pgbench_steady_tps": (16, False),
    "pgbench_connect_tps": (8, True),
}
THREADS = 2
INIT_TIMEOUT = 120.0


class Database:
    """The database pgbench runs against: `port` on 127.0.0.1, `user`, `name`."""

    def __init__(self, port: int, user: str, name: str) -> None:
        self.port, self.user, self.name = port, user, name
        self._server = None

    @classmethod
    def from_url(cls, url: str) -> Database:
        """An existing server's database, from a postgresql://USER@127.0.0.1:PORT/DB URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or parts.hostname not in (
            HOST,
            "localhost",
        ):
            raise SkipPath(f"--postgres: expected postgresql://USER@{HOST}:PORT/DATABASE")
        return cls(parts.port or 5432, parts.username or "postgres", parts.path.lstrip("/"))

    @classmethod
    def start(cls, logs: Path) -> Database:
        """A throwaway PostgreSQL server (stop it with `close`). Raises SkipPath when it
        cannot run here."""
        import pytest  # the server helper reports a missing PostgreSQL as a skip

        try:
            from tests.e2e.postgres_server import PostgresServer

            logs.mkdir(exist_ok=True)
            server = PostgresServer(logs)
            server.start()
        except (ImportError, AssertionError, OSError) as exc:
            raise SkipPath(f"PostgreSQL did not start: {exc}") from None
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise SkipPath(str(exc)) from None
        database = cls(server.port, "postgres", "postgres")
        database._server = server
        return database

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def argv(self, pgbench: str, port: int, *options: object) -> list:
        return [pgbench, "-h", HOST, "-p", port, "-U", self.user, *options, self.name]


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found is None:
        raise SkipPath("pgbench not found (Debian package postgresql-contrib or postgresql)")
    return found


def initialize(database: Database) -> None:
    """``pgbench -i`` (scale 1), straight to the server. Raises Failed."""
    done = run_command(
        database.argv(pgbench_binary(), database.port, "-i", "-q", "-s", 1), timeout=INIT_TIMEOUT
    )
    if done.returncode:
        raise Failed(f"pgbench -i: {done.stderr.strip().splitlines()[-1:]}")


def tps(database: Database, port: int, key: str, seconds: float) -> float:
    """Transactions per second of the `key` case through `port`. Raises Failed."""
    clients, connect = CASES[key]
    options: list[object] = ["-n", "-S", "-c", clients, "-j", THREADS, "-T", max(1, round(seconds))]
    options += ["-C"] if connect else []
    try:
        done = run_command(database.argv(pgbench_binary(), port, *options), timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise Failed(f"pgbench gave no result within {seconds + 60:g} s") from None
    match = re.search(r"^tps = ([\d.]+)", done.stdout, re.MULTILINE)
    if done.returncode or match is None:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise Failed(f"pgbench: {lines[-1] if lines else f'exit status {done.returncode}'}")
    if failed := re.search(r"^number of failed transactions: ([1-9]\d*)", done.stdout, re.M):
        raise Failed(f"pgbench: {failed[1]} transactions failed")
    return float(match[1])
