# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bridges in a dict: for tests, the demo, and services that keep bridges elsewhere."""

from __future__ import annotations

import builtins
import threading
import time

import attrs

from relay.credentials import DEFAULT_COST, hash_secret, new_secret
from relay.errors import DuplicateBridge, NodeNameTaken, UnknownBridge
from relay.store.records import BridgeRecord, NodeRecord, StoreBase, check_name


class MemoryStore(StoreBase):
    """Bridges in a dict, gone with the process. Thread-safe (one lock)."""

    def __init__(self) -> None:
        self._bridges: dict[str, BridgeRecord] = {}
        self._generation = 0
        self._nodes: dict[str, NodeRecord] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemoryStore bridges={len(self._bridges)}>"

    def import_bridge(self, record: BridgeRecord) -> None:
        """Add `record` as it is (ID, hash, times). Raises DuplicateBridge if its name or ID
        is taken."""
        check_name(record.name)
        with self._lock:
            if record.id in self._bridges or self._find(record.name) is not None:
                raise DuplicateBridge(record.name)
            self._bridges[record.id] = record
            self._generation += 1

    def _find(self, bridge: str) -> BridgeRecord | None:
        if (record := self._bridges.get(bridge)) is not None:
            return record
        return next((r for r in self._bridges.values() if r.name == bridge), None)

    def find(self, bridge: str) -> BridgeRecord | None:
        """As `Store.find`."""
        with self._lock:
            return self._find(bridge)

    def list(self) -> list[BridgeRecord]:
        """As `Store.list`."""
        with self._lock:
            return sorted(self._bridges.values(), key=lambda r: (r.created_at, r.name))

    def delete(self, bridge: str) -> BridgeRecord:
        """As `Store.delete`."""
        with self._lock:
            if (record := self._find(bridge)) is None:
                raise UnknownBridge(bridge)
            del self._bridges[record.id]
            self._generation += 1
            return record

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        """As `Store.rotate`."""
        record, secret = self.get(bridge), new_secret()
        hashed = hash_secret(secret, cost)
        with self._lock:
            if record.id not in self._bridges:
                raise UnknownBridge(bridge)
            self._bridges[record.id] = attrs.evolve(self._bridges[record.id], secret_hash=hashed)
            self._generation += 1
        return secret

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """As `Store.rehash`."""
        with self._lock:
            record = self._bridges.get(bridge_id)
            if record is None or record.secret_hash != old_hash:
                return False
            self._bridges[bridge_id] = attrs.evolve(record, secret_hash=new_hash)
            self._generation += 1
        return True

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        """As `Store.mark_seen`."""
        with self._lock:
            if (record := self._bridges.get(bridge_id)) is not None:
                when = time.time() if when is None else when
                self._bridges[bridge_id] = attrs.evolve(record, last_seen_at=when)

    def generation(self) -> int:
        """As `Store.generation`."""
        return self._generation

    def claim_node(self, node: NodeRecord, timeout: float) -> None:
        now = time.time()
        with self._lock:
            held = self._nodes.get(node.name)
            if held and held.instance != node.instance and now - held.heartbeat_at < timeout:
                raise NodeNameTaken(f"node {node.name} is running (another process has the name)")
            self._nodes[node.name] = attrs.evolve(node, heartbeat_at=now)

    def list_nodes(self) -> builtins.list[NodeRecord]:
        now = time.time()
        with self._lock:
            nodes = sorted(self._nodes.values(), key=lambda n: n.name)
        return [attrs.evolve(n, age=now - n.heartbeat_at) for n in nodes]

    def remove_node(self, name: str, instance: str) -> None:
        with self._lock:
            if (held := self._nodes.get(name)) is not None and held.instance == instance:
                del self._nodes[name]

    def close(self) -> None:
        """Nothing to release."""
