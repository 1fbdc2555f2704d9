# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The live agent sessions, by bridge. A bridge may have several (agents on several hosts):
all are kept, new streams go to the one with the fewest open, and a new agent never pushes
an older one out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs
import trio


@attrs.define(eq=False)
class AgentSession:
    """One authenticated agent connection and the mux session running over it."""

    bridge_id: str
    bridge_name: str
    peer: str
    secret_hash: bytes = attrs.field(repr=False)
    mux: Any = attrs.field(default=None, repr=False)
    info: dict[str, Any] = attrs.field(factory=dict, repr=False)
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, repr=False)
    connected_at: float = attrs.field(factory=time.time)
    close_reason: str | None = None
    #: The control stream (when the agent supports one), opened first; not a tunnel.
    control: Any = attrs.field(default=None, repr=False)
    #: Held while a control message is written (they come from several tasks).
    control_lock: trio.Lock = attrs.field(factory=trio.Lock, repr=False)
    #: The agent supports the "move" capability (with a control stream).
    can_move: bool = False
    #: Told to move while the relay drains: it lets this session go once it has another.
    moving: bool = False
    #: Set once the session is over and out of the registry.
    ended: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def open_streams(self) -> int:
        """Tunnels open through this session (the control stream is not one)."""
        return self.mux.streams_open - (self.control is not None)

    def load(self) -> tuple[int, int]:
        """What new streams are spread by: open tunnels, then streams opened so far."""
        stats = self.mux.statistics()
        return stats.streams_open - (self.control is not None), stats.streams_opened_total

    def close(self, reason: str) -> None:
        """Ends the session (the task serving it logs why and cleans up)."""
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_scope.cancel()

    def describe(self) -> dict[str, Any]:
        """What ``bridge-relay bridges list`` shows of the session (JSON-serialisable)."""
        return {
            "peer": self.peer,
            "connected_at": self.connected_at,
            "streams_open": self.open_streams(),
            "agent": self.info,
        }


class Arrival:
    """A session being welcomed (see `Registry.arrive`); `settle` ends it, once."""

    def __init__(self, registry: Registry, keys: tuple[str, ...]) -> None:
        self._registry: Registry | None = registry
        self._keys = keys

    def settle(self) -> None:
        """The session is registered, or will never be; calling it again does nothing."""
        if self._registry is not None:
            self._registry._settle(self._keys)
            self._registry = None


class Registry:
    """The live agent sessions by bridge ID (and name). Not thread-safe; used from the relay's
    Trio run only."""

    def __init__(self) -> None:
        self._sessions: dict[str, list[AgentSession]] = {}
        self._ids: dict[str, str] = {}  # bridge name -> ID, for the bridges with sessions
        #: Opens of each bridge (by ID) that have no stream in a session yet.
        self.opening: dict[str, int] = {}
        #: Session slots taken by each bridge (by ID): sessions, and logins being admitted.
        self._slots: dict[str, int] = {}
        #: Sessions welcomed but not registered yet, by bridge ID and by name.
        self._arriving: dict[str, int] = {}
        self._arrivals = trio.lowlevel.ParkingLot()
        #: Bumped when a session is registered or forgotten (`wait_change`).
        self.version = 0
        self._changes = trio.lowlevel.ParkingLot()

    def __iter__(self) -> Iterator[AgentSession]:
        return iter([s for sessions in self._sessions.values() for s in sessions])

    def __len__(self) -> int:
        return sum(len(sessions) for sessions in self._sessions.values())

    def add(self, session: AgentSession) -> None:
        """Register an authenticated session."""
        self._sessions.setdefault(session.bridge_id, []).append(session)
        self._ids[session.bridge_name] = session.bridge_id
        self._arrivals.unpark_all()
        self._changed()

    def remove(self, session: AgentSession) -> None:
        """Forget a session (once it has ended); unknown ones are ignored."""
        sessions = self._sessions.get(session.bridge_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(session.bridge_id, None)
            if self._ids.get(session.bridge_name) == session.bridge_id:
                del self._ids[session.bridge_name]
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._changes.unpark_all()

    async def wait_change(self, seen: int) -> int:
        """Return the registry's `version` once it differs from `seen` (at once if it does
        already): a session was registered or forgotten since. Cancellation: nothing to
        undo."""
        if self.version != seen:
            await trio.lowlevel.checkpoint()
        while self.version == seen:
            await self._changes.park()
        return self.version

    def sessions(self, bridge: str) -> list[AgentSession]:
        """The sessions of the bridge with this ID or name, oldest first."""
        sessions = self._sessions.get(bridge) or self._sessions.get(self._ids.get(bridge, ""))
        return list(sessions or ())

    def candidates(self, bridge: str) -> list[AgentSession]:
        """The sessions to try for a new stream: fewest open streams first, then the one that
        has carried fewest so far (so that short connections are spread too)."""
        sessions = self.sessions(bridge)
        if len(sessions) > 1:  # one session (the usual case) needs no statistics
            sessions.sort(key=AgentSession.load)
        return sessions

    def arrive(self, bridge_id: str, bridge_name: str) -> Arrival:
        """Note a session that is being welcomed: from now until it is registered (or fails),
        callers asking for the bridge wait for it (`wait_arrival`) instead of hearing that it is
        not connected. End the arrival with `Arrival.settle`."""
        keys = (bridge_id, bridge_name)
        for key in keys:
            self._arriving[key] = self._arriving.get(key, 0) + 1
        return Arrival(self, keys)

    def _settle(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if (count := self._arriving.get(key, 0)) > 1:
                self._arriving[key] = count - 1
            else:
                self._arriving.pop(key, None)
        self._arrivals.unpark_all()

    def is_arriving(self, bridge: str) -> bool:
        """Whether a session of the bridge with this ID or name is being welcomed."""
        return bridge in self._arriving

    async def wait_arrival(self) -> None:
        """Wait until a session is registered or an arrival ends. Cancellation: nothing to undo."""
        await self._arrivals.park()

    def claim_session(self, bridge_id: str, limit: int) -> bool:
        """Take a session slot of the bridge unless it holds `limit` already; False then.
        Every claim is given back with `release_session`."""
        taken = self._slots.get(bridge_id, 0)
        if taken >= limit:
            return False
        self._slots[bridge_id] = taken + 1
        return True

    def release_session(self, bridge_id: str) -> None:
        if (taken := self._slots.get(bridge_id, 0)) > 1:
            self._slots[bridge_id] = taken - 1
        else:
            self._slots.pop(bridge_id, None)

    def opening_stream(self, bridge_id: str) -> _Opening:
        """A context manager that counts an open of the bridge in `opening` while its body
        runs (a plain object, not a generator: it is entered once per tunnel)."""
        return _Opening(self.opening, bridge_id)

    def open_streams(self, bridge: str) -> int:
        """Streams open across the sessions of `bridge` (a name or ID)."""
        return sum(session.open_streams() for session in self.sessions(bridge))

    def open_streams_total(self) -> int:
        """Streams open across all sessions."""
        return sum(session.open_streams() for session in self)

    def close_bridge(self, bridge_id: str, reason: str) -> None:
        """End every session of `bridge_id`, giving `reason` (see `AgentSession.close`)."""
        for session in self.sessions(bridge_id):
            session.close(reason)


class _Opening:
    """`Registry.opening_stream`: one more open of `bridge_id` in `counts` while entered."""

    __slots__ = ("_bridge_id", "_counts")

    def __init__(self, counts: dict[str, int], bridge_id: str) -> None:
        self._counts, self._bridge_id = counts, bridge_id

    def __enter__(self) -> None:
        self._counts[self._bridge_id] = self._counts.get(self._bridge_id, 0) + 1

    def __exit__(self, *exc_info: object) -> None:
        counts, bridge_id = self._counts, self._bridge_id
        if counts[bridge_id] > 1:
            counts[bridge_id] -= 1
        else:
            del counts[bridge_id]
