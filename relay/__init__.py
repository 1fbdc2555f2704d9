# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay end of trio-bridge: admits bridge agents and tunnels connections through them.

    relay = Relay(SQLiteStore("relay-data/bridges.db"), server_ssl_context(cert, key))
    listeners = await nursery.start(relay.serve, "0.0.0.0", 4000)
    stream = await relay.connect("prod-vpc", "db.internal", 5432)
"""

from .config import RelayConfig
from .errors import (
    BridgeBusy,
    BridgeNotConnected,
    RelayError,
    RelayShuttingDown,
    TargetNotAllowed,
    TargetUnreachable,
    TunnelError,
    UnknownBridge,
)
from .relay import Relay
from .store import BridgeRecord, MemoryStore, SQLiteStore

__all__ = [
    "BridgeBusy",
    "BridgeNotConnected",
    "BridgeRecord",
    "MemoryStore",
    "Relay",
    "RelayConfig",
    "RelayError",
    "RelayShuttingDown",
    "SQLiteStore",
    "TargetNotAllowed",
    "TargetUnreachable",
    "TunnelError",
    "UnknownBridge",
]
