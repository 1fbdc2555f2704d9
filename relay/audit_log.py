# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The audit log file: one JSON object per line, appended, read back by `bridge-relay audit`.

The file is opened with O_APPEND and every batch goes out in whole lines with one write, so
the relay and the `bridges` commands can append to it at the same time, and logrotate's
`copytruncate` is safe (writes land at the new end). A rotation that renames the file is
followed by `JsonLinesSink.reopen` (the relay does it on SIGHUP).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from relay.audit import AuditEvent, Caller
from relay.errors import StoreError, StoreUnavailable

log = logging.getLogger("relay.audit")

_FILE_MODE = 0o640
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def encode(events: Iterable[AuditEvent]) -> bytes:
    """Events as JSON lines (compact, UTF-8, one per line)."""
    return "".join(_ENCODER.encode(event.to_dict()) + "\n" for event in events).encode()


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append(path: str | os.PathLike[str], events: Sequence[AuditEvent]) -> None:
    """Append `events` to the audit log at `path` (created if missing, mode 0640); OSError
    if it cannot be written."""
    fd = _open(Path(path))
    try:
        _write_all(fd, encode(events))
    finally:
        os.close(fd)


class JsonLinesSink:
    """An `AuditSink` appending to the file at `path`. Opening it checks that the file can
    be written (OSError otherwise)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = _open(self.path)

    def __repr__(self) -> str:
        return f"<JsonLinesSink {str(self.path)!r}>"

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Append the batch with one write (a regular file takes it at once: no await)."""
        if self._fd is None:
            self._fd = _open(self.path)
        _write_all(self._fd, encode(events))

    def reopen(self) -> None:
        """Write to a file at `path` from now on (a new one if it was renamed away)."""
        fd = _open(self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        """Close the file; closing twice is fine."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AuditStore(Protocol):
    """A store that keeps audit events too (`relay.PostgresStore`)."""

    def append_audit(self, events: Sequence[dict[str, Any]]) -> None: ...


class StoreAuditSink:
    """An `AuditSink` appending to the audit table of `store` (PostgreSQL: audit_events),
    from a worker thread of its own: one batch at a time, in order.

    While the store cannot be reached (`StoreUnavailable`), batches are held, up to `backlog`
    events, and written first thing at the next `write` once it can: the relay logs the
    store's loss and return once each, not every batch held. A batch that would take the
    backlog past `backlog` is dropped (write raises StoreError, which the audit trail logs
    and counts). Events still held at `close` are logged as lost, with their count.
    Cancellation returns at once; the thread finishes its batch on its own.
    """

    def __init__(self, store: AuditStore, *, backlog: int = 10_000) -> None:
        self.store = store
        self.backlog = backlog
        self._held: list[dict[str, Any]] = []
        self._limiter = trio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"<StoreAuditSink {self.store!r}>"

    @property
    def held(self) -> int:
        """Events held until the store can be reached again."""
        return len(self._held)

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Writes the events held, then `events`; holds them all while the store cannot be
        reached. Raises StoreError when the store refuses them (they are dropped), or when
        the backlog is full (`events` are dropped, the ones held before are kept)."""
        rows = self._held + [event.to_dict() for event in events]
        try:
            await trio.to_thread.run_sync(
                self.store.append_audit, rows, limiter=self._limiter, abandon_on_cancel=True
            )
        except StoreUnavailable as exc:
            if len(rows) > self.backlog:
                raise StoreError(
                    f"{exc} (and {self.held} audit events already held for it, the most "
                    "this relay holds)"
                ) from None
            self._held = rows
            return
        except StoreError:
            self._held = []
            raise
        self._held = []

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        if self._held:
            log.error(
                "Audit events lost: the store was unreachable until the relay stopped",
                extra={"fields": {"events": self.held, "store": repr(self.store)}},
            )
            self._held = []


# -- reading back ----------------------------------------------------------------------------


def parse_since(text: str, *, now: float | None = None) -> float:
    """A `--since` value as a timestamp: a duration back from now (`90s`, `15m`, `2h`, `7d`)
    or an ISO 8601 date or time (`2026-01-31`, `2026-01-31T08:00`, local time unless it
    has an offset or Z). ValueError says what is expected."""
    text = text.strip()
    if match := _DURATION.fullmatch(text):
        now = time.time() if now is None else now
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected a duration back from now (30s, 15m, 2h, 7d) "
            "or an ISO 8601 date or time (2026-01-31T08:00)"
        ) from None
    return moment.timestamp()  # naive: local time


def event_time(event: dict[str, Any]) -> float | None:
    """The `time` of an event read back, as a timestamp; None when it is missing or not ISO 8601."""
    try:
        moment = datetime.datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return moment.timestamp()


def read(path: str | os.PathLike[str]) -> Iterator[dict[str, Any] | None]:
    """The events of the audit log at `path`, in order; None for a line that is not an event
    (cut short, or garbage after a crash). OSError if the file cannot be read."""
    with open(path, "rb") as file:
        for line in file:
            line = line.strip(b"\0 \t\r\n")  # copytruncate can leave NULs before new lines
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                yield None
                continue
            yield event if isinstance(event, dict) and "event" in event else None


def matches(event: dict[str, Any], *, bridge: str | None, since: float | None) -> bool:
    """Whether `event` is about `bridge` (a name or an ID) and not older than `since`."""
    if bridge is not None and bridge not in (event.get("bridge"), event.get("bridge_id")):
        return False
    if since is not None:
        when = event_time(event)
        if when is None or when < since:
            return False
    return True


_COLUMNS = ("TIME", "EVENT", "BRIDGE", "CALLER", "TARGET", "OUTCOME", "DURATION", "UP", "DOWN")


def table(events: Iterable[dict[str, Any]]) -> list[str]:
    """Events as the rows of a table (a header first); the reason of an outcome, or who
    made an admin change, ends the row."""
    rows = [(*_COLUMNS, "DETAIL")]
    for event in events:
        when = event_time(event)
        stamp = "?" if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        if str(event.get("event", "")).startswith("tunnel."):
            rows.append(
                (
                    stamp,
                    str(event.get("event")),
                    str(event.get("bridge")),
                    _caller(event.get("caller")),
                    str(event.get("target")),
                    str(event.get("outcome")),
                    f"{float(event.get('duration') or 0):.3f}s",
                    str(event.get("bytes_up", 0)),
                    str(event.get("bytes_down", 0)),
                    str(event.get("reason") or ""),
                )
            )
        else:
            who = f"{event.get('command')}" + (f" by {event['user']}" if event.get("user") else "")
            if event.get("node"):
                who += f" on {event['node']}"
            kind, bridge = str(event.get("event")), str(event.get("bridge"))
            rows.append((stamp, kind, bridge, "", "", "", "", "", "", who))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip()
        for row in rows
    ]


def _caller(caller: Any) -> str:
    if not isinstance(caller, dict):
        return "?"
    fields = {name: caller.get(name) for name in ("label", "address", "user")}
    return Caller(str(caller.get("kind") or "?"), **fields).describe()
