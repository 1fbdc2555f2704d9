# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What every bridge store holds and promises: `BridgeRecord`, the name rules, `Store`."""

from __future__ import annotations

import builtins
import json
import re
import time
import uuid
from collections.abc import Iterable
from typing import Protocol

import attrs

from relay.credentials import DEFAULT_COST, hash_secret, new_secret
from relay.errors import InvalidBridgeName, UnknownBridge

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@attrs.frozen
class BridgeRecord:
    """One bridge: its ID (a UUID), unique name, bcrypt hash of its secret and timestamps
    (seconds since the epoch)."""

    id: str
    name: str
    secret_hash: bytes = attrs.field(repr=False)
    created_at: float
    last_seen_at: float | None = None

    def matches(self, bridge: str) -> bool:
        """Whether `bridge` is this bridge's ID or name."""
        return bridge in (self.id, self.name)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class NodeRecord:
    """A relay process registered in the store (`Store.claim_node`).

    `instance` tells two processes that give the same name apart; `heartbeat_at` is the
    store's clock when it last wrote (PostgreSQL's, so that nodes with skewed clocks agree);
    `age` (seconds since that heartbeat, by the store's clock) is filled in by `list_nodes`.
    `bridges` and `streams`: bridges with a session on this node and tunnels open through it;
    `held`: the IDs of those bridges; `links`: the nodes it has a peer link up with.
    `agent_advertise`: the ``HOST:PORT`` the relay tells agents to reach this node at
    (``--agent-advertise``), None when it tells them none (and for a node of an older
    release).
    """

    name: str
    instance: str
    agent_address: str
    peer_address: str | None = None
    peer_fingerprint: str | None = None
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    bridges: int = 0
    streams: int = 0
    held: tuple[str, ...] = attrs.field(default=(), converter=_names)
    links: tuple[str, ...] = attrs.field(default=(), converter=_names)
    agent_advertise: str | None = None
    age: float | None = attrs.field(default=None, eq=False)


def encode_names(names: tuple[str, ...]) -> str:
    """A node's `held` or `links` as stored: a JSON array."""
    return json.dumps(list(names), separators=(",", ":"))


def decode_names(text: str | None) -> tuple[str, ...]:
    """`held` or `links` as stored (None, by a node of an older release: none)."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def check_name(name: str) -> str:
    """`name` if it is a valid bridge name; raises InvalidBridgeName otherwise."""
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
    """The bridges, as the CLI and the relay see them.

    Every method is synchronous, thread-safe and one short transaction; the relay calls them
    from a bounded pool of worker threads (`relay.store.access.StoreAccess`), never on its
    event loop. Failures of the store itself raise `relay.errors.StoreError`.
    `generation()` grows whenever any process changed the bridges (create, delete, rotate,
    import; not `mark_seen`). `claim_node` registers or heartbeats a relay process: it raises
    NodeNameTaken if another instance holds the name and heartbeated less than `timeout`
    seconds ago. A store whose writers can tell running relays at once also
    has ``async listen(on_change, *, task_status)`` (see `PostgresStore.listen`).
    """

    def create_bridge(self, name: str, *, cost: int = DEFAULT_COST) -> tuple[str, str]:
        """A new bridge named `name`: returns (ID, secret). The secret is shown only now; the store
        keeps its bcrypt hash of `cost`. Raises InvalidBridgeName or DuplicateBridge."""

    def import_bridge(self, record: BridgeRecord) -> None:
        """Add `record` as it is (ID, hash, times). Raises InvalidBridgeName, or DuplicateBridge
        when its name or ID is taken."""

    def find(self, bridge: str) -> BridgeRecord | None:
        """The bridge with this ID or name, or None."""

    def get(self, bridge: str) -> BridgeRecord:
        """The bridge with this ID or name. Raises UnknownBridge."""

    def list(self) -> list[BridgeRecord]:
        """Every bridge, oldest first."""

    def delete(self, bridge: str) -> BridgeRecord:
        """Remove the bridge with this ID or name and return it. Raises UnknownBridge."""

    def rotate(self, bridge: str, *, cost: int = DEFAULT_COST) -> str:
        """Give the bridge a new secret (hashed with `cost`) and return it; the old one stops
        working. Raises UnknownBridge."""

    def rehash(self, bridge_id: str, old_hash: bytes, new_hash: bytes) -> bool:
        """Replace the bridge's hash by `new_hash` (the same secret at a higher bcrypt cost) if
        it is still `old_hash`; False if the bridge is gone or its secret changed meanwhile."""

    def mark_seen(self, bridge_id: str, when: float | None = None) -> None:
        """Note that an agent of `bridge_id` authenticated at `when` (now by default); an unknown ID
        is ignored."""

    def generation(self) -> int:
        """A number that grows whenever any process changed the bridges (not for `mark_seen`)."""

    def claim_node(self, node: NodeRecord, timeout: float) -> None:
        """Register or heartbeat a relay process (its heartbeat time is the store's clock).
        Raises NodeNameTaken if another instance holds the name and heartbeated less than
        `timeout` seconds ago."""

    def list_nodes(self) -> builtins.list[NodeRecord]:
        """Every registered node, by name, with its heartbeat `age` filled in."""

    def remove_node(self, name: str, instance: str) -> None:
        """Remove the node `name` if `instance` still holds it."""

    def close(self) -> None:
        """Release what the store holds (connections, files); it is not used afterwards."""


class StoreBase:
    """What every store does alike on top of its own `find` and `import_bridge`:
    `create_bridge` and `get`. The stores of this package derive from it."""

    def find(self, bridge: str) -> BridgeRecord | None:
        """As `Store.find`."""
        raise NotImplementedError

    def import_bridge(self, record: BridgeRecord) -> None:
        """As `Store.import_bridge`."""
        raise NotImplementedError

    def create_bridge(self, name: str, *, cost: int = DEFAULT_COST) -> tuple[str, str]:
        """As `Store.create_bridge`."""
        check_name(name)
        bridge_id, secret = str(uuid.uuid4()), new_secret()
        self.import_bridge(BridgeRecord(bridge_id, name, hash_secret(secret, cost), time.time()))
        return bridge_id, secret

    def get(self, bridge: str) -> BridgeRecord:
        """As `Store.get`."""
        if (record := self.find(bridge)) is None:
            raise UnknownBridge(bridge)
        return record
