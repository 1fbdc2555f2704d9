# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bridges in PostgreSQL: one store shared by relays on any number of machines.

psycopg 3 with a `psycopg_pool.ConnectionPool`; every method is synchronous and the relay
runs it in a bounded pool of worker threads (`relay.store.access`). Writes that change the
bridges bump a generation counter and send a NOTIFY in the same transaction, so a relay
that `listen`s learns of a `bridges delete` or `rotate` made anywhere as soon as it commits.

The schema is versioned (table ``schema_version``, one row per migration applied) and every
migration is additive: new tables, new nullable or defaulted columns, new indexes; never a
drop, a rename or a changed type. So a relay of the previous release keeps working against
a schema migrated by a newer one during a rolling upgrade.
"""

from __future__ import annotations

import builtins
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import psycopg
import psycopg_pool
import trio
from psycopg import conninfo, errors, sql
from psycopg.types.json import Jsonb

from relay.credentials import DEFAULT_COST, hash_secret, new_secret
from relay.errors import (
    DuplicateBridge,
    NodeNameTaken,
    StoreError,
    StoreNotInitialised,
    StoreUnavailable,
    UnknownBridge,
)
from relay.store.records import BridgeRecord, NodeRecord, StoreBase, check_name
from relay.store.sqlite import NODE_COLUMNS, NODE_UPDATE, node_from_row, node_to_row

log = logging.getLogger("relay.store")

#: The channel a NOTIFY goes to when a bridge is created, deleted, rotated or imported; the
#: payload is the bridge's ID.
CHANNEL = "trio_bridge_bridges"
# Taken while migrating, so that relays starting at once do not migrate twice.
_MIGRATION_LOCK = 0x7472696F_62726467 & 0x7FFFFFFFFFFFFFFF

# (version, statements). Append only; each one additive (see the module docstring).
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE bridges (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                secret_hash BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                last_seen_at DOUBLE PRECISION
            )""",
            """CREATE TABLE bridge_generation (
                singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
                value BIGINT NOT NULL
            )""",
            "INSERT INTO bridge_generation (value) VALUES (0)",
        ],
    ),
    (
        2,
        [
            # The audit trail (relay.audit): every event as written to the JSON-lines log
            # (`data`), with the columns one selects by.
            """CREATE TABLE audit_events (
                id BIGSERIAL PRIMARY KEY,
                time TIMESTAMPTZ NOT NULL,
                event TEXT NOT NULL,
                bridge TEXT,
                bridge_id TEXT,
                node TEXT,
                data JSONB NOT NULL
            )""",
            "CREATE INDEX audit_events_time ON audit_events (time)",
            "CREATE INDEX audit_events_bridge_time ON audit_events (bridge_id, time)",
        ],
    ),
    (
        3,
        [
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                instance TEXT NOT NULL,
                agent_address TEXT NOT NULL,
                peer_address TEXT,
                peer_fingerprint TEXT,
                started_at DOUBLE PRECISION NOT NULL,
                heartbeat_at DOUBLE PRECISION NOT NULL,
                bridges INTEGER NOT NULL DEFAULT 0,
                streams INTEGER NOT NULL DEFAULT 0
            )""",
        ],
    ),
    (
        4,
        [
            # Presence: the bridges a node holds a session of, and its peer links (JSON arrays).
            "ALTER TABLE nodes ADD COLUMN held_bridges TEXT",
            "ALTER TABLE nodes ADD COLUMN peer_links TEXT",
        ],
    ),
    (
        5,
        [
            # The HOST:PORT agents are told to reach the node at (--agent-advertise). A node
            # of the previous release inserts and updates its rows without it: NULL, none.
            "ALTER TABLE nodes ADD COLUMN agent_advertise TEXT",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_COLUMNS = "id, name, secret_hash, created_at, last_seen_at"


@attrs.frozen(kw_only=True)
class PostgresConfig:
    """Durations are in seconds.

    max_connections: connections the pool opens at most (match the relay's store threads).
    connect_timeout: a connection attempt gives up after this (libpq rounds to whole seconds,
        at least 2).
    wait_timeout: a call waits this long for a connection from the pool, then opens one of
        its own.
    keepalive_idle: TCP keepalives after this much silence, so a vanished server is noticed.
    """

    max_connections: int = attrs.field(default=4, validator=attrs.validators.gt(0))
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    wait_timeout: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    keepalive_idle: int = attrs.field(default=10, validator=attrs.validators.gt(0))


def describe(dsn: str) -> str:
    """The DSN as a postgresql:// URL without its password (for messages and logs)."""
    params = conninfo.conninfo_to_dict(dsn)
    user = params.get("user")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    netloc = f"{user}@{host}" if user else str(host)
    if port:
        netloc += f":{port}"
    return f"postgresql://{netloc}/{params.get('dbname', '')}"


def check_dsn(dsn: str) -> str:
    """`dsn` if libpq can parse it; ValueError (with libpq's reason) otherwise."""
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "cannot be parsed"
        raise ValueError(f"invalid PostgreSQL URL: {reason}") from None
    return dsn


class PostgresStore(StoreBase):
    """Bridges in a PostgreSQL database (`dsn`: a postgresql:// URL or a libpq conninfo).

    Nothing connects until first use. Then, with `create` (the default), the schema is made
    or migrated to this release's version; without it, a database with no schema raises
    StoreNotInitialised. Unreachable servers and failed statements raise StoreError, whose
    text names the server (never the password) and libpq's reason. Thread-safe.
    """

    def __init__(
        self, dsn: str, *, create: bool = True, config: PostgresConfig | None = None
    ) -> None:
        self.dsn = check_dsn(dsn)
        self.create = create
        self.config = config or PostgresConfig()
        self.where = describe(dsn)
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where!r}>"

    # -- connections --------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        idle = self.config.keepalive_idle
        return {
            "autocommit": True,
            "connect_timeout": max(2, round(self.config.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": max(1, idle // 3),
            "keepalives_count": 3,
            "application_name": "trio-bridge relay",
        }

    def connect(self) -> psycopg.Connection:
        """A new connection of its own (not from the pool), autocommit; raises StoreError."""
        try:
            return psycopg.connect(self.dsn, **self._kwargs())
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> StoreError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        # OperationalError: the server refused, dropped or did not answer (pool timeouts too).
        kind = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else StoreError
        return kind(f"bridge store {self.where}: {reason}")

    def _open(self) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if self._pool is None:
                with self.connect() as conn:  # reports why the server cannot be reached
                    self._migrate(conn)
                pool: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
                    self.dsn,
                    kwargs=self._kwargs(),
                    min_size=1,
                    max_size=self.config.max_connections,
                    timeout=self.config.wait_timeout,
                    name="trio-bridge",
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def ensure_schema(self) -> None:
        """Connect now, and make or migrate the schema (with `create`); raises StoreError."""
        self._open()

    def _migrate(self, conn: psycopg.Connection) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                exists = conn.execute("SELECT to_regclass('schema_version')").fetchone()
                if exists is None or exists[0] is None:
                    if not self.create:
                        raise StoreNotInitialised(
                            f"bridge store {self.where} has no bridges table yet: "
                            "'bridge-relay bridges create' or 'serve' makes it"
                        )
                    conn.execute(
                        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                        " applied_at DOUBLE PRECISION NOT NULL)"
                    )
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                current = (row[0] if row else None) or 0
                for version, statements in MIGRATIONS:
                    if version <= current:
                        continue
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                        (version, time.time()),
                    )
                    log.info(
                        "Bridge store schema migrated",
                        extra={"fields": {"store": self.where, "version": version}},
                    )
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; if the pool has none ready within `wait_timeout` (it is
        replacing connections a server restart broke, at its own pace), one of our own."""
        pool = self._open()
        try:
            conn = pool.getconn()
        except psycopg_pool.PoolTimeout:
            with self.connect() as conn:
                yield conn
            return
        except psycopg_pool.PoolClosed:
            raise StoreError(f"bridge store {self.where}: closed") from None
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def _run(self, fn: Callable[[psycopg.Connection], Any], *, retry: bool = True) -> Any:
        """fn(conn) on a pooled connection. A connection the server dropped (a restart)
        is replaced once when `retry`: only for statements that may run twice."""
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return fn(conn)
            except psycopg.OperationalError as exc:
                if not retry or attempt == 2:
                    raise self._error(exc) from None
            except errors.UniqueViolation:
                raise
            except psycopg.Error as exc:
                raise self._error(exc) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """As `Store.close`."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # -- bridges ------------------------------------------------------------------------

    def _changed(self, conn: psycopg.Connection, bridge_id: str) -> None:
        conn.execute("UPDATE bridge_generation SET value = value + 1")
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, bridge_id))

    def import_bridge(self, record: BridgeRecord) -> None:
        """Add `record` as it is (ID, hash, times). Raises DuplicateBridge if its name or ID
        is taken."""
        check_name(record.name)

        def insert(conn: psycopg.Connection) -> None:
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO bridges ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
                    (
                        record.id,
                        record.name,
                        record.secret_hash,
                        record.created_at,
                        record.last_seen_at,
                    ),
                )
                self._changed(conn, record.id)

        try:
            self._run(insert, retry=False)
        except errors.UniqueViolation:
            raise DuplicateBridge(record.name) from None

    def find(self, bridge: str) -> BridgeRecord | None:
        """As `Store.find`."""
        row = self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM bridges WHERE id = %s OR name = %s", (bridge, bridge)
            ).fetchone()
        )
        return None if row is None else BridgeRecord(*row)

    def list(self) -> list[BridgeRecord]:
        """As `Store.list`."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM bridges ORDER BY created_at, name"
            ).fetchall()
        )
        return [BridgeRecord(*row) for row in rows]

    def delete(self, bridge: str) -> BridgeRecord:
        """As `Store.delete`."""

        def delete(conn: psycopg.Connection) -> BridgeRecord | None:
            with conn.transaction():
                row = conn.execute(
                    f"DELETE FROM bridges WHERE id = %s OR name = %s RETURNING {_COLUMNS}",
                    (bridge, bridge),
                ).fetchone()
                if row is not None:
                    self._changed(conn, row[0])
            return None if row is None else BridgeRecord(*row)

        if (record := self._run(delete)) is None:
            raise UnknownBridge(bridge)
        return record

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        """As `Store.rotate`."""
        record, secret = self.get(bridge), new_secret()
        hashed = hash_secret(secret, cost)

        def update(conn: psycopg.Connection) -> int:
            with conn.transaction():
                cursor = conn.execute(
                    "UPDATE bridges SET secret_hash = %s WHERE id = %s", (hashed, record.id)
                )
                if cursor.rowcount:
                    self._changed(conn, record.id)
                return cursor.rowcount

        if self._run(update) == 0:
            raise UnknownBridge(bridge)
        return secret

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """As `Store.rehash`."""

        def update(conn: psycopg.Connection) -> int:
            with conn.transaction():
                cursor = conn.execute(
                    "UPDATE bridges SET secret_hash = %s WHERE id = %s AND secret_hash = %s",
                    (new_hash, bridge_id, old_hash),
                )
                if cursor.rowcount:
                    self._changed(conn, bridge_id)
                return cursor.rowcount

        return self._run(update) > 0

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        """As `Store.mark_seen`."""
        when = time.time() if when is None else when
        self._run(
            lambda conn: conn.execute(
                "UPDATE bridges SET last_seen_at = %s WHERE id = %s", (when, bridge_id)
            )
        )

    def append_audit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Append audit events, in their JSON form (`relay.audit` events' `to_dict()`), to
        the table audit_events, in one transaction. Raises StoreError (StoreUnavailable when
        the server cannot be reached); a failed batch is not retried here (it could be
        written twice)."""
        rows = [
            (
                datetime.datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")),
                event["event"],
                event.get("bridge"),
                event.get("bridge_id"),
                event.get("node"),
                Jsonb(dict(event)),
            )
            for event in events
        ]
        if not rows:
            return

        def insert(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO audit_events (time, event, bridge, bridge_id, node, data)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )

        self._run(insert, retry=False)

    def generation(self) -> int:
        """As `Store.generation`."""
        row = self._run(lambda conn: conn.execute("SELECT value FROM bridge_generation").fetchone())
        return int(row[0])

    # -- nodes ----------------------------------------------------------------------------

    def claim_node(self, node: NodeRecord, timeout: float) -> None:
        now = "extract(epoch from clock_timestamp())"  # the database's clock: every node's
        before, after = node_to_row(node)

        def upsert(conn: psycopg.Connection) -> int:
            return conn.execute(
                f"INSERT INTO nodes ({NODE_COLUMNS})"
                f" VALUES (%s, %s, %s, %s, %s, %s, {now}, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (name) DO UPDATE SET {NODE_UPDATE}"
                f" WHERE nodes.instance = excluded.instance OR nodes.heartbeat_at < {now} - %s",
                (*before, *after, timeout),
            ).rowcount

        if self._run(upsert) == 0:
            raise NodeNameTaken(f"node {node.name} is running (another process has the name)")

    def list_nodes(self) -> builtins.list[NodeRecord]:
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {NODE_COLUMNS}, extract(epoch from clock_timestamp()) - heartbeat_at"
                " FROM nodes ORDER BY name"
            ).fetchall()
        )
        return [node_from_row(row[:-1], float(row[-1])) for row in rows]

    def remove_node(self, name: str, instance: str) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM nodes WHERE name = %s AND instance = %s", (name, instance)
            )
        )

    # -- notifications ------------------------------------------------------------------

    async def listen(
        self, on_change: Callable[[str], None], *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Call on_change(bridge_id) for every bridge created, deleted, rotated or imported
        by anyone, until cancelled. Connects and LISTENs (in a worker thread), then waits on
        the connection's socket in Trio: no thread is held while waiting.

        `task_status.started()` once listening. Raises StoreError when the connection cannot
        be made or is lost: the caller polls `generation()` meanwhile and calls again.
        """
        conn = await trio.to_thread.run_sync(self._listening_connection)
        try:
            task_status.started()
            pgconn = conn.pgconn
            while True:
                await trio.lowlevel.wait_readable(pgconn.socket)
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    raise self._error(exc) from None
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise StoreError(f"bridge store {self.where}: connection lost")
                while (notify := pgconn.notifies()) is not None:
                    on_change(notify.extra.decode())
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close)

    def _listening_connection(self) -> psycopg.Connection:
        self._open()
        conn = self.connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        return conn
