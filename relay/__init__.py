# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay end of trio-bridge: admits bridge agents and tunnels connections through them.

    relay = Relay(SQLiteStore("relay-data/bridges.db"), server_ssl_context(cert, key))
    listeners = await nursery.start(relay.serve, "0.0.0.0", 4000)
    stream = await relay.connect("prod-vpc", "db.internal", 5432)

Also here: everything that needs both ends of a bridge (``relay.demo``, the test helpers in
``relay.testing`` and the pytest plugin ``relay.pytest_plugin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.lazy import lazy_exports

# Names are imported on first use, not with the package: ``relay.pytest_plugin`` is
# imported at every pytest start and must stay light.
_EXPORTS = {
    "RelayConfig": "relay.config",
    "PeerConfig": "relay.config",
    "PeerIdentity": "relay.certificates",
    "BridgeBusy": "relay.errors",
    "BridgeNotConnected": "relay.errors",
    "RelayError": "relay.errors",
    "RelayShuttingDown": "relay.errors",
    "TargetNotAllowed": "relay.errors",
    "TargetUnreachable": "relay.errors",
    "TunnelError": "relay.errors",
    "UnknownBridge": "relay.errors",
    "Relay": "relay.relay",
    "BridgeRecord": "relay.store",
    "MemoryStore": "relay.store",
    "SQLiteStore": "relay.store",
    "PostgresStore": "relay.store",
    "StoreError": "relay.errors",
}
__all__ = [
    "BridgeBusy",
    "BridgeNotConnected",
    "BridgeRecord",
    "MemoryStore",
    "PeerConfig",
    "PeerIdentity",
    "PostgresStore",
    "Relay",
    "RelayConfig",
    "RelayError",
    "RelayShuttingDown",
    "SQLiteStore",
    "StoreError",
    "TargetNotAllowed",
    "TargetUnreachable",
    "TunnelError",
    "UnknownBridge",
]

if TYPE_CHECKING:
    from relay.certificates import PeerIdentity
    from relay.config import PeerConfig, RelayConfig
    from relay.errors import (
        BridgeBusy,
        BridgeNotConnected,
        RelayError,
        RelayShuttingDown,
        StoreError,
        TargetNotAllowed,
        TargetUnreachable,
        TunnelError,
        UnknownBridge,
    )
    from relay.relay import Relay
    from relay.store import BridgeRecord, MemoryStore, PostgresStore, SQLiteStore


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
