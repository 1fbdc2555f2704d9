# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Per-bridge slots for tunnels waiting for the agent's answer: a burst queues for them,
first come first served, instead of being refused."""

from __future__ import annotations

import trio


class _Bridge:
    __slots__ = ("freed", "held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters = trio.lowlevel.ParkingLot()  # opens waiting for a slot, FIFO
        self.freed = trio.lowlevel.ParkingLot()  # accept loops waiting for room


class OpenSlots:
    """At most `limit` slots per bridge (by ID); `take` waits for one, in arrival order.
    Not thread-safe; used from the relay's Trio run only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._bridges: dict[str, _Bridge] = {}

    def held(self, bridge_id: str) -> int:
        """Slots of the bridge taken now."""
        entry = self._bridges.get(bridge_id)
        return 0 if entry is None else entry.held

    def waiting(self, bridge_id: str) -> int:
        """Opens of the bridge waiting for a slot."""
        entry = self._bridges.get(bridge_id)
        return 0 if entry is None else len(entry.waiters)

    def full(self, bridge_id: str) -> bool:
        """Whether a new open of the bridge would wait."""
        entry = self._bridges.get(bridge_id)
        return entry is not None and (entry.held >= self.limit or bool(entry.waiters))

    def take(self, bridge_id: str) -> None:
        """Takes a free slot of the bridge at once (no checkpoint); call only when not
        `full`. Every slot taken or handed over is given back with `release`."""
        self._bridges.setdefault(bridge_id, _Bridge()).held += 1

    async def wait(self, bridge_id: str) -> None:
        """Waits, behind the opens that came first, until a slot of the bridge is handed
        over: the caller then holds it (give it back with `release`). Cancelled, it holds
        none: a slot is handed over only to a wait that then returns."""
        entry = self._bridges.setdefault(bridge_id, _Bridge())
        try:
            await entry.waiters.park()
        except BaseException:
            self._forget(bridge_id, entry)
            raise

    def release(self, bridge_id: str) -> None:
        """Gives back a slot: to the first open waiting for one, if any."""
        entry = self._bridges[bridge_id]
        if entry.waiters:
            entry.waiters.unpark()  # the slot passes on, still held
            return
        entry.held -= 1
        entry.freed.unpark_all()
        self._forget(bridge_id, entry)

    async def wait_for_room(self, bridge_id: str) -> None:
        """Returns once the bridge is not `full` (at once if it is not); takes no slot."""
        while (entry := self._bridges.get(bridge_id)) is not None and self.full(bridge_id):
            await entry.freed.park()

    def _forget(self, bridge_id: str, entry: _Bridge) -> None:
        if not entry.held and not entry.waiters and not entry.freed:
            self._bridges.pop(bridge_id, None)
