# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
import socket
import sqlite3
import stat
import uuid

import attrs
import bcrypt
import psycopg
import pytest
import trio

from relay import PostgresStore, SQLiteStore, UnknownBridge
from relay.credentials import rehash_secret, same_secret
from relay.errors import (
    DuplicateBridge,
    InvalidBridgeName,
    NodeNameTaken,
    StoreError,
    StoreNotInitialised,
)
from relay.store import BridgeRecord, NodeRecord, StoreURL, open_store
from relay.store.postgres import SCHEMA_VERSION

from .relay_support import COST


def test_create_returns_uuid_and_urlsafe_secret_and_stores_only_a_hash(store):
    bridge_id, secret = store.create_bridge("prod-vpc", cost=COST)
    assert str(uuid.UUID(bridge_id)) == bridge_id
    assert len(secret) == 43 and all(c.isalnum() or c in "-_" for c in secret)
    record = store.get("prod-vpc")
    assert record.id == bridge_id and record.name == "prod-vpc"
    assert secret.encode() not in record.secret_hash
    assert bcrypt.checkpw(secret.encode(), record.secret_hash)
    assert record.secret_hash not in repr(record).encode()
    assert record.last_seen_at is None


def test_lookup_by_name_or_id(store):
    bridge_id, _ = store.create_bridge("a", cost=COST)
    store.create_bridge("b", cost=COST)
    assert store.get(bridge_id).name == "a"
    assert store.find("b").name == "b"
    assert store.find("c") is None
    with pytest.raises(UnknownBridge, match="Unknown bridge: c"):
        store.get("c")
    assert [r.name for r in store.list()] == ["a", "b"]


def test_names_are_unique_and_checked(store):
    store.create_bridge("a", cost=COST)
    with pytest.raises(DuplicateBridge, match="already exists"):
        store.create_bridge("a", cost=COST)
    for bad in ["", "has space", "-dash-first", "x" * 65, "ünï", str(uuid.uuid4())]:
        with pytest.raises(InvalidBridgeName):
            store.create_bridge(bad, cost=COST)


def test_delete(store):
    bridge_id, _ = store.create_bridge("a", cost=COST)
    assert store.delete("a").id == bridge_id
    assert store.find(bridge_id) is None
    with pytest.raises(UnknownBridge):
        store.delete(bridge_id)


def test_rotate_replaces_the_secret(store):
    bridge_id, old = store.create_bridge("a", cost=COST)
    new = store.rotate(bridge_id, cost=COST)
    assert new != old
    stored = store.get("a").secret_hash
    assert bcrypt.checkpw(new.encode(), stored)
    assert not bcrypt.checkpw(old.encode(), stored)
    with pytest.raises(UnknownBridge):
        store.rotate("nope", cost=COST)


def test_rehash_replaces_the_hash_only_if_unchanged(store):
    bridge_id, secret = store.create_bridge("a", cost=COST)
    old = store.get(bridge_id).secret_hash
    generation = store.generation()
    new = rehash_secret(secret.encode(), old, COST + 1)
    assert same_secret(old, new) and not same_secret(new, old)
    assert store.rehash(bridge_id, old, new)
    assert store.get(bridge_id).secret_hash == new and bcrypt.checkpw(secret.encode(), new)
    assert store.generation() > generation
    # Rotated meanwhile (or rehashed elsewhere): the other change is kept.
    rotated = store.rotate(bridge_id, cost=COST)
    assert not store.rehash(bridge_id, new, rehash_secret(secret.encode(), new, COST + 2))
    assert bcrypt.checkpw(rotated.encode(), store.get(bridge_id).secret_hash)
    assert not same_secret(new, store.get(bridge_id).secret_hash)
    assert not store.rehash(str(uuid.uuid4()), old, new)


def test_mark_seen(store):
    bridge_id, _ = store.create_bridge("a", cost=COST)
    store.mark_seen(bridge_id, 1234.5)
    assert store.get(bridge_id).last_seen_at == 1234.5
    store.mark_seen(str(uuid.uuid4()))  # an unknown bridge is no error


def test_generation_grows_on_every_change(store):
    seen = [store.generation()]
    bridge_id, _ = store.create_bridge("a", cost=COST)
    seen.append(store.generation())
    store.rotate(bridge_id, cost=COST)
    seen.append(store.generation())
    store.delete(bridge_id)
    seen.append(store.generation())
    assert seen == sorted(set(seen))
    assert store.generation() == seen[-1]  # reading changes nothing


def test_import_keeps_id_hash_and_times(store):
    record = BridgeRecord(str(uuid.uuid4()), "moved", b"$2b$04$" + b"x" * 53, 1000.5, 2000.25)
    before = store.generation()
    store.import_bridge(record)
    assert store.get("moved") == record
    assert store.generation() != before
    with pytest.raises(DuplicateBridge):
        store.import_bridge(attrs.evolve(record, id=str(uuid.uuid4())))
    with pytest.raises(DuplicateBridge):
        store.import_bridge(attrs.evolve(record, name="other"))


def test_nodes_register_heartbeat_and_leave(store):
    first = NodeRecord("n1", "instance-a", "0.0.0.0:4000", started_at=1000.0)
    store.claim_node(first, timeout=60)
    store.claim_node(attrs.evolve(first, bridges=2, streams=5), timeout=60)  # a heartbeat
    store.claim_node(NodeRecord("n2", "instance-b", "10.0.0.2:4000"), timeout=60)
    (n1, n2) = store.list_nodes()
    assert (n1.name, n1.agent_address, n1.bridges, n1.streams) == ("n1", "0.0.0.0:4000", 2, 5)
    assert n1.started_at == 1000.0 and n1.peer_address is None
    assert 0 <= n1.age < 5 and n2.name == "n2"
    # Another process with a live node's name is refused; once the node is silent for
    # longer than the timeout, the name may be taken.
    intruder = NodeRecord("n1", "instance-c", "127.0.0.1:4001")
    with pytest.raises(NodeNameTaken, match="node n1 is running"):
        store.claim_node(intruder, timeout=60)
    store.claim_node(intruder, timeout=0.000001)
    assert store.list_nodes()[0].instance == "instance-c"
    store.remove_node("n1", "instance-a")  # not its row any more: left alone
    assert [n.name for n in store.list_nodes()] == ["n1", "n2"]
    store.remove_node("n1", "instance-c")
    assert [n.name for n in store.list_nodes()] == ["n2"]


def test_nodes_carry_presence_and_rows_of_older_relays_read_as_none(store):
    record = NodeRecord(
        "n1",
        "a",
        "0.0.0.0:4000",
        peer_address="10.0.0.1:4001",
        peer_fingerprint="sha256:" + "ab" * 32,
        held=("id-1", "id-2"),
        links=("n2",),
    )
    store.claim_node(record, timeout=60)
    (listed,) = store.list_nodes()
    assert (listed.peer_address, listed.peer_fingerprint) == (
        record.peer_address,
        record.peer_fingerprint,
    )
    assert (listed.held, listed.links) == (("id-1", "id-2"), ("n2",))
    # A relay of the previous release writes no presence columns.
    store.claim_node(NodeRecord("n0", "b", "0.0.0.0:4000"), timeout=60)
    assert store.list_nodes()[0].held == ()


def test_nodes_carry_the_agent_address_they_advertise(store):
    store.claim_node(NodeRecord("n1", "a", "0.0.0.0:4000", agent_advertise="10.0.0.1:4000"), 60)
    store.claim_node(NodeRecord("n2", "b", "0.0.0.0:4000"), timeout=60)
    assert [n.agent_advertise for n in store.list_nodes()] == ["10.0.0.1:4000", None]


def test_postgres_nodes_of_the_previous_release_heartbeat_against_the_new_schema(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.claim_node(NodeRecord("new", "a", "0.0.0.0:4000", agent_advertise="h:4000"), 60)
        # Migration 4's statement, as the previous release runs it: the new column is
        # neither inserted nor updated, and reads as none.
        previous = (
            "INSERT INTO nodes (name, instance, agent_address, peer_address, peer_fingerprint,"
            " started_at, heartbeat_at, bridges, streams, held_bridges, peer_links)"
            " VALUES (%s, 'b', '0.0.0.0:4001', NULL, NULL, 0,"
            " extract(epoch from clock_timestamp()), 0, 0, '[]', '[]')"
            " ON CONFLICT (name) DO UPDATE SET instance = excluded.instance,"
            " heartbeat_at = excluded.heartbeat_at"
        )
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(previous, ("old",))
            conn.execute(previous, ("old",))
        new, old = store.list_nodes()
        assert (new.agent_advertise, old.agent_advertise, old.age is not None) == (
            "h:4000",
            None,
            True,
        )
    finally:
        store.close()


def test_sqlite_store_of_an_older_release_gains_the_presence_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE nodes (name TEXT PRIMARY KEY, instance TEXT NOT NULL,"
            " agent_address TEXT NOT NULL, peer_address TEXT, peer_fingerprint TEXT,"
            " started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,"
            " bridges INTEGER NOT NULL DEFAULT 0, streams INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO nodes (name, instance, agent_address, started_at, heartbeat_at)"
            " VALUES ('old', 'x', '0.0.0.0:4000', 0, 0)"
        )
    store = SQLiteStore(path)
    try:
        store.claim_node(NodeRecord("new", "y", "0.0.0.0:4001", held=("id-1",)), timeout=60)
        new, old = store.list_nodes()  # by name
        assert (old.name, old.held, new.held) == ("old", (), ("id-1",))
        assert (old.agent_advertise, new.agent_advertise) == (None, None)
    finally:
        store.close()


def test_sqlite_changes_by_another_process_are_noticed(tmp_path):
    serving, cli = SQLiteStore(tmp_path / "b.db"), SQLiteStore(tmp_path / "b.db")
    try:
        before = serving.generation()
        bridge_id, _ = cli.create_bridge("a", cost=COST)
        after_create = serving.generation()
        assert after_create != before
        assert serving.find(bridge_id) is not None
        cli.rotate(bridge_id, cost=COST)
        after_rotate = serving.generation()
        assert after_rotate != after_create
        assert serving.get(bridge_id).secret_hash == cli.get(bridge_id).secret_hash
        cli.delete(bridge_id)
        assert serving.generation() != after_rotate
        assert serving.find(bridge_id) is None
    finally:
        serving.close()
        cli.close()


def test_sqlite_file_is_private_and_created_on_first_use(tmp_path):
    path = tmp_path / "data" / "bridges.db"
    store = SQLiteStore(path)
    assert not path.exists()
    store.list()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    store.close()
    bridge_id, _ = SQLiteStore(path).create_bridge("kept", cost=COST)
    assert SQLiteStore(path).get("kept").id == bridge_id


def test_postgres_changes_by_another_process_are_noticed_and_notified(postgres_url):
    async def main():
        serving, cli = PostgresStore(postgres_url), PostgresStore(postgres_url)
        notified: list[str] = []
        try:
            before = serving.generation()
            async with trio.open_nursery() as nursery:
                await nursery.start(serving.listen, notified.append)
                bridge_id, _ = await trio.to_thread.run_sync(
                    lambda: cli.create_bridge("a", cost=COST)
                )
                await trio.to_thread.run_sync(lambda: cli.rotate(bridge_id, cost=COST))
                await trio.to_thread.run_sync(cli.delete, bridge_id)
                with trio.fail_after(5):
                    while len(notified) < 3:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            assert notified == [bridge_id] * 3
            assert serving.generation() == before + 3
            assert serving.find(bridge_id) is None
        finally:
            serving.close()
            cli.close()

    trio.run(main)


def test_postgres_schema_is_versioned_and_made_only_when_asked(postgres_url):
    with pytest.raises(StoreNotInitialised, match="bridges create"):
        PostgresStore(postgres_url, create=False).list()
    store = PostgresStore(postgres_url)
    assert store.list() == []
    store.close()
    again = PostgresStore(postgres_url, create=False)  # a second start migrates nothing
    assert again.list() == []
    again.close()
    with psycopg.connect(postgres_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_postgres_unreachable_is_one_line_without_password():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    with pytest.raises(StoreError) as caught:
        store.list()
    message = str(caught.value)
    assert message.startswith(f"bridge store postgresql://u@127.0.0.1:{port}/db: ")
    assert "refused" in message and "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "kind", "shown"),
    [
        ("sqlite:///var/lib/relay/b.db", "sqlite", "sqlite:///var/lib/relay/b.db"),
        ("sqlite://relay-data/b.db", "sqlite", "sqlite://relay-data/b.db"),
        (
            "postgresql://u:pw@db.example:5433/relay",
            "postgresql",
            "postgresql://u@db.example:5433/relay",
        ),
        ("postgres://db.example/relay", "postgresql", "postgresql://db.example/relay"),
    ],
)
def test_store_urls(text, kind, shown):
    url = StoreURL.parse(text)
    assert (url.kind, str(url)) == (kind, shown)
    assert "pw" not in repr(url)


@pytest.mark.parametrize(
    "text", ["", "bridges.db", "mysql://x/y", "sqlite://", "sqlite:///", "postgresql://h/db?x=1"]
)
def test_bad_store_urls_say_what_is_expected(text):
    with pytest.raises(ValueError, match="invalid (store|PostgreSQL) URL"):
        StoreURL.parse(text)


def test_open_store(tmp_path):
    store = open_store(f"sqlite://{tmp_path}/b.db")
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "b.db"
