# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bridges in an SQLite file, shared by the CLI and a running relay on one machine."""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.ops.errors import os_reason
from relay.credentials import DEFAULT_COST, hash_secret, new_secret
from relay.errors import DuplicateBridge, NodeNameTaken, StoreError, UnknownBridge
from relay.store.records import (
    BridgeRecord,
    NodeRecord,
    StoreBase,
    check_name,
    decode_names,
    encode_names,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bridges (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    last_seen_at REAL
)
"""
_NODES = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    agent_address TEXT NOT NULL,
    peer_address TEXT,
    peer_fingerprint TEXT,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    bridges INTEGER NOT NULL DEFAULT 0,
    streams INTEGER NOT NULL DEFAULT 0
)
"""
#: Added later: a node's held bridge IDs and its peer links, JSON (PostgreSQL migration 4);
#: the address agents are told to reach it at (migration 5).
_NODE_ADDITIONS = {"held_bridges": "TEXT", "peer_links": "TEXT", "agent_advertise": "TEXT"}
_COLUMNS = "id, name, secret_hash, created_at, last_seen_at"
NODE_COLUMNS = (
    "name, instance, agent_address, peer_address, peer_fingerprint, started_at, heartbeat_at,"
    " bridges, streams, held_bridges, peer_links, agent_advertise"
)
#: `claim_node`'s update of a row it may take (both stores): every column but the name.
NODE_UPDATE = ", ".join(
    f"{column} = excluded.{column}" for column in NODE_COLUMNS.replace(" ", "").split(",")[1:]
)


def node_to_row(node: NodeRecord) -> tuple[tuple, tuple]:
    """`node`'s values in the order of `NODE_COLUMNS` (both stores), as the ones before
    ``heartbeat_at`` and the ones after: each store sets the heartbeat by its own clock."""
    return (
        (
            node.name,
            node.instance,
            node.agent_address,
            node.peer_address,
            node.peer_fingerprint,
            node.started_at,
        ),
        (
            node.bridges,
            node.streams,
            encode_names(node.held),
            encode_names(node.links),
            node.agent_advertise,
        ),
    )


def node_from_row(row: tuple, age: float) -> NodeRecord:
    """A `NodeRecord` from a row of `NODE_COLUMNS` (both stores)."""
    name, instance, agent_address, peer_address, peer_fingerprint, started, beat = row[:7]
    return NodeRecord(
        name,
        instance,
        agent_address,
        peer_address,
        peer_fingerprint,
        started,
        beat,
        row[7],
        row[8],
        held=decode_names(row[9]),
        links=decode_names(row[10]),
        agent_advertise=row[11],
        age=age,
    )


class SQLiteStore(StoreBase):
    """Bridges in an SQLite database file (WAL mode), created with mode 0600 on first use.

    Safe to use from several processes at once (the CLI writes while `serve` reads) and from
    several threads (one connection, one lock). `generation()` follows SQLite's data_version,
    so changes made by other processes are seen. Errors of the file raise StoreError.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._generation = 0
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r}>"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if self._db is None:
                    self._db = self._open()
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except (sqlite3.Error, OSError) as exc:
                reason = os_reason(exc)
                raise StoreError(f"bridge store {self.path}: {reason}") from None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(_SCHEMA)
            db.execute(_NODES)
            have = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
            for column, kind in _NODE_ADDITIONS.items():
                if column not in have:  # additive: older relays keep their columns
                    db.execute(f"ALTER TABLE nodes ADD COLUMN {column} {kind}")
            self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """As `Store.close`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _write(self, sql: str, params: tuple) -> int:
        """Runs one statement in its own write transaction; returns the rows it changed."""
        with self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(sql, params)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return cursor.rowcount

    def import_bridge(self, record: BridgeRecord) -> None:
        """Add `record` as it is (ID, hash, times). Raises DuplicateBridge if its name or ID
        is taken."""
        check_name(record.name)
        try:
            self._write(
                f"INSERT INTO bridges ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.secret_hash,
                    record.created_at,
                    record.last_seen_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise DuplicateBridge(record.name) from None
        self._generation += 1

    def find(self, bridge: str) -> BridgeRecord | None:
        """As `Store.find`."""
        with self._conn() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM bridges WHERE id = ? OR name = ?", (bridge, bridge)
            ).fetchone()
        return None if row is None else BridgeRecord(*row)

    def list(self) -> list[BridgeRecord]:
        """As `Store.list`."""
        with self._conn() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM bridges ORDER BY created_at, name")
            return [BridgeRecord(*row) for row in rows]

    def delete(self, bridge: str) -> BridgeRecord:
        """As `Store.delete`."""
        record = self.get(bridge)
        if self._write("DELETE FROM bridges WHERE id = ?", (record.id,)) == 0:
            raise UnknownBridge(bridge)
        self._generation += 1
        return record

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        """As `Store.rotate`."""
        record, secret = self.get(bridge), new_secret()
        hashed = hash_secret(secret, cost)
        if self._write("UPDATE bridges SET secret_hash = ? WHERE id = ?", (hashed, record.id)) == 0:
            raise UnknownBridge(bridge)
        self._generation += 1
        return secret

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """As `Store.rehash`."""
        sql = "UPDATE bridges SET secret_hash = ? WHERE id = ? AND secret_hash = ?"
        if self._write(sql, (new_hash, bridge_id, old_hash)) == 0:
            return False
        self._generation += 1
        return True

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        """As `Store.mark_seen`."""
        self._write(
            "UPDATE bridges SET last_seen_at = ? WHERE id = ?",
            (time.time() if when is None else when, bridge_id),
        )

    def generation(self) -> int:
        """As `Store.generation`."""
        with self._conn() as db:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._data_version = version
                self._generation += 1
            return self._generation

    def claim_node(self, node: NodeRecord, timeout: float) -> None:
        now = time.time()
        before, after = node_to_row(node)
        changed = self._write(
            f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (name) DO UPDATE SET {NODE_UPDATE}"
            " WHERE nodes.instance = excluded.instance OR nodes.heartbeat_at < ?",
            (*before, now, *after, now - timeout),
        )
        if changed == 0:
            raise NodeNameTaken(f"node {node.name} is running (another process has the name)")

    def list_nodes(self) -> builtins.list[NodeRecord]:
        now = time.time()
        with self._conn() as db:
            rows = db.execute(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY name").fetchall()
        return [node_from_row(row, now - row[6]) for row in rows]

    def remove_node(self, name: str, instance: str) -> None:
        self._write("DELETE FROM nodes WHERE name = ? AND instance = ?", (name, instance))
