# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Where bridges live: an SQLite file shared by the CLI and a running relay, or memory.

Both stores have the same synchronous interface; every call is one short transaction.
`generation()` is a cheap counter that grows whenever any process changed the bridges, which
is how a running relay notices `bridges delete` or `bridges rotate` done by the CLI.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Protocol

import attrs

from relay.credentials import DEFAULT_COST, hash_secret, new_secret
from relay.errors import DuplicateBridge, InvalidBridgeName, UnknownBridge

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@attrs.frozen
class BridgeRecord:
    id: str
    name: str
    secret_hash: bytes = attrs.field(repr=False)
    created_at: float
    last_seen_at: float | None = None

    def matches(self, bridge: str) -> bool:
        return bridge in (self.id, self.name)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or _is_uuid(name):
        raise InvalidBridgeName(
            f"invalid bridge name {name!r}: use 1 to 64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class Store(Protocol):
    def create_bridge(self, name: str, *, cost: int = DEFAULT_COST) -> tuple[str, str]: ...
    def find(self, bridge: str) -> BridgeRecord | None: ...
    def get(self, bridge: str) -> BridgeRecord: ...
    def list(self) -> list[BridgeRecord]: ...
    def delete(self, bridge: str) -> BridgeRecord: ...
    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str: ...
    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool: ...
    def mark_seen(self, bridge_id: str, when: float | None = None) -> None: ...
    def generation(self) -> int: ...


class MemoryStore:
    """Bridges in a dict: for tests, the demo, and services that keep bridges elsewhere."""

    def __init__(self) -> None:
        self._bridges: dict[str, BridgeRecord] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"<MemoryStore bridges={len(self._bridges)}>"

    def create_bridge(self, name: str, *, cost: int = DEFAULT_COST) -> tuple[str, str]:
        check_name(name)
        if any(r.name == name for r in self._bridges.values()):
            raise DuplicateBridge(name)
        bridge_id, secret = str(uuid.uuid4()), new_secret()
        self._bridges[bridge_id] = BridgeRecord(
            bridge_id, name, hash_secret(secret, cost), time.time()
        )
        self._generation += 1
        return bridge_id, secret

    def find(self, bridge: str) -> BridgeRecord | None:
        if (record := self._bridges.get(bridge)) is not None:
            return record
        return next((r for r in self._bridges.values() if r.name == bridge), None)

    def get(self, bridge: str) -> BridgeRecord:
        if (record := self.find(bridge)) is None:
            raise UnknownBridge(bridge)
        return record

    def list(self) -> list[BridgeRecord]:
        return sorted(self._bridges.values(), key=lambda r: (r.created_at, r.name))

    def delete(self, bridge: str) -> BridgeRecord:
        record = self._bridges.pop(self.get(bridge).id)
        self._generation += 1
        return record

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        record, secret = self.get(bridge), new_secret()
        self._bridges[record.id] = attrs.evolve(record, secret_hash=hash_secret(secret, cost))
        self._generation += 1
        return secret

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """Replace the bridge's hash by `new_hash` (the same secret, a higher bcrypt cost)
        if it is still `old_hash`; False if the bridge is gone or its secret changed."""
        record = self._bridges.get(bridge_id)
        if record is None or record.secret_hash != old_hash:
            return False
        self._bridges[bridge_id] = attrs.evolve(record, secret_hash=new_hash)
        self._generation += 1
        return True

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        if (record := self._bridges.get(bridge_id)) is not None:
            when = time.time() if when is None else when
            self._bridges[bridge_id] = attrs.evolve(record, last_seen_at=when)

    def generation(self) -> int:
        return self._generation


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bridges (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    last_seen_at REAL
)
"""
_COLUMNS = "id, name, secret_hash, created_at, last_seen_at"


class SQLiteStore:
    """Bridges in an SQLite database file (WAL mode), created with mode 0600 on first use.

    Safe to use from several processes at once: the CLI writes while `serve` reads.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r}>"

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(_SCHEMA)
            self._db = db
            self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(sql, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return cursor

    def create_bridge(self, name: str, *, cost: int = DEFAULT_COST) -> tuple[str, str]:
        check_name(name)
        bridge_id, secret = str(uuid.uuid4()), new_secret()
        hashed = hash_secret(secret, cost)
        try:
            self._write(
                "INSERT INTO bridges (id, name, secret_hash, created_at) VALUES (?, ?, ?, ?)",
                (bridge_id, name, hashed, time.time()),
            )
        except sqlite3.IntegrityError:
            raise DuplicateBridge(name) from None
        self._generation += 1
        return bridge_id, secret

    def find(self, bridge: str) -> BridgeRecord | None:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM bridges WHERE id = ? OR name = ?",
            (bridge, bridge),
        ).fetchone()
        return None if row is None else BridgeRecord(*row)

    def get(self, bridge: str) -> BridgeRecord:
        if (record := self.find(bridge)) is None:
            raise UnknownBridge(bridge)
        return record

    def list(self) -> list[BridgeRecord]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM bridges ORDER BY created_at, name")
        return [BridgeRecord(*row) for row in rows]

    def delete(self, bridge: str) -> BridgeRecord:
        record = self.get(bridge)
        if self._write("DELETE FROM bridges WHERE id = ?", (record.id,)).rowcount == 0:
            raise UnknownBridge(bridge)
        self._generation += 1
        return record

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        record, secret = self.get(bridge), new_secret()
        hashed = hash_secret(secret, cost)
        cursor = self._write("UPDATE bridges SET secret_hash = ? WHERE id = ?", (hashed, record.id))
        if cursor.rowcount == 0:
            raise UnknownBridge(bridge)
        self._generation += 1
        return secret

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """Replace the bridge's hash by `new_hash` (the same secret, a higher bcrypt cost)
        if it is still `old_hash`; False if the bridge is gone or its secret changed."""
        cursor = self._write(
            "UPDATE bridges SET secret_hash = ? WHERE id = ? AND secret_hash = ?",
            (new_hash, bridge_id, old_hash),
        )
        if cursor.rowcount == 0:
            return False
        self._generation += 1
        return True

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        self._write(
            "UPDATE bridges SET last_seen_at = ? WHERE id = ?",
            (time.time() if when is None else when, bridge_id),
        )

    def generation(self) -> int:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._generation += 1
        return self._generation
