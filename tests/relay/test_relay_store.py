# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
import stat
import uuid

import bcrypt
import pytest

from relay import SQLiteStore, UnknownBridge
from relay.errors import DuplicateBridge, InvalidBridgeName

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
