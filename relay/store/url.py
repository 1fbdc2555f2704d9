# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Store URLs: ``postgresql://USER@HOST:PORT/DB`` (any libpq URL) or ``sqlite:///PATH``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from relay.store.records import Store

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


@attrs.frozen
class StoreURL:
    """A parsed store URL: `kind` is "postgresql" or "sqlite"; `target` the libpq URL or
    the SQLite file's path. `str()` never shows a password."""

    kind: str
    target: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> StoreURL:
        """Raises ValueError, saying what is wrong, for anything but the two forms."""
        if text.startswith(_POSTGRES_SCHEMES):
            from relay.store.postgres import check_dsn

            return cls("postgresql", check_dsn(text))
        if text.startswith(_SQLITE_SCHEME):
            path = text[len(_SQLITE_SCHEME) :]
            if not path or path == "/" or "?" in path:
                raise ValueError(
                    f"invalid store URL {text!r}: expected sqlite:///ABSOLUTE/PATH or "
                    "sqlite://RELATIVE/PATH"
                )
            return cls("sqlite", path)
        shown = text.split("://", 1)[0] + "://..." if "://" in text else text
        raise ValueError(
            f"invalid store URL {shown!r}: expected postgresql://USER@HOST:PORT/DATABASE "
            "or sqlite:///PATH"
        )

    @classmethod
    def sqlite(cls, path: Path) -> StoreURL:
        """The URL of the SQLite database file at `path`."""
        return cls("sqlite", str(path))

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite://{self.target}"
        from relay.store.postgres import describe

        return describe(self.target)


def open_store(url: StoreURL | str, *, create: bool = True) -> Store:
    """The store `url` names; nothing is opened before first use. Without `create`, a
    PostgreSQL database with no schema raises StoreNotInitialised at first use."""
    if isinstance(url, str):
        url = StoreURL.parse(url)
    if url.kind == "postgresql":
        from relay.store.postgres import PostgresStore

        return PostgresStore(url.target, create=create)
    from relay.store.sqlite import SQLiteStore

    return SQLiteStore(url.target)
