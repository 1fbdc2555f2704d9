# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Where bridges live: `SQLiteStore` (a file, the default of one relay), `PostgresStore` (one
store for relays on many machines) or `MemoryStore`; all have the `Store` interface.

`open_store(url)` picks one from a store URL: ``postgresql://...`` or ``sqlite:///PATH``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.store.memory import MemoryStore
from relay.store.records import BridgeRecord, NodeRecord, Store, check_name
from relay.store.sqlite import SQLiteStore
from relay.store.url import StoreURL, open_store

if TYPE_CHECKING:
    from relay.store.postgres import PostgresStore

__all__ = [
    "BridgeRecord",
    "MemoryStore",
    "NodeRecord",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreURL",
    "check_name",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # psycopg is imported only by those who use PostgreSQL.
    if name == "PostgresStore":
        from relay.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
