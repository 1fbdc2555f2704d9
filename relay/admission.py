# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Who may be on the way in: the pre-authentication slots every agent connection (TLS or
WebSocket) holds from accept until it is admitted or dropped, shared fairly between source
addresses; and the aggregated log of the connections dropped before authentication.

Sans-IO: the gate calls back to close a connection it takes a slot from; clocks are
injectable.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

import attrs


@attrs.define(eq=False, repr=False)
class Ticket:
    """One pre-authentication slot, held by one connection until `release`.

    `on_evict` is called (at most once) if the gate gives the slot to a connection from an
    address holding fewer slots; the holder should then close its connection. A ticket is
    `protect`ed once its Hello is in: from then on its login is bounded by the login budget
    and it is never evicted.
    """

    source: str
    _gate: AdmissionGate
    on_evict: Callable[[], None] | None = None
    evicted: bool = False
    protected: bool = False
    released: bool = False

    def __repr__(self) -> str:
        return f"<Ticket {self.source} evicted={self.evicted} released={self.released}>"

    def move(self, source: str) -> None:
        """Count this slot against `source` from now on (the address a PROXY header gave)."""
        if not (self.released or self.evicted) and source != self.source:
            self._gate._remove(self)
            self.source = source
            self._gate._add(self)

    def protect(self) -> None:
        self.protected = True

    def on_eviction(self, close: Callable[[], None]) -> None:
        """Call `close` once the slot is taken from this ticket: now if it was already,
        else when it is (as `on_evict`)."""
        self.on_evict = close
        if self.evicted:
            close()

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if not (self.released or self.evicted):
            self._gate._remove(self)
        self.released = True


class AdmissionGate:
    """At most `capacity` slots, shared fairly between source addresses.

    While slots are free, anyone gets one. When all are taken, a newcomer whose address holds
    fewer slots than the address holding the most takes the oldest unprotected slot of that
    address (whose connection is closed); otherwise the newcomer is refused. So one address
    may use every slot while nobody else wants one, but can never keep the others out: under
    contention each address ends up with about `capacity / addresses`.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._count = 0
        self._by_source: dict[str, OrderedDict[Ticket, None]] = {}

    def __len__(self) -> int:
        return self._count

    def held(self, source: str) -> int:
        """Slots `source` holds now."""
        tickets = self._by_source.get(source)
        return len(tickets) if tickets else 0

    def admit(self, source: str) -> Ticket | None:
        """A slot for a connection from `source`, or None: close it unread."""
        if self._count >= self.capacity and not self._evict_for(source):
            return None
        ticket = Ticket(source, self)
        self._add(ticket)
        return ticket

    def _evict_for(self, source: str) -> bool:
        mine = self.held(source)
        heaviest = sorted(self._by_source.items(), key=lambda item: len(item[1]), reverse=True)
        for _, tickets in heaviest:
            if len(tickets) <= mine + 1:
                return False
            for ticket in tickets:
                if not ticket.protected:
                    self._remove(ticket)
                    ticket.evicted = True
                    if ticket.on_evict is not None:
                        ticket.on_evict()
                    return True
        return False

    def _add(self, ticket: Ticket) -> None:
        self._by_source.setdefault(ticket.source, OrderedDict())[ticket] = None
        self._count += 1

    def _remove(self, ticket: Ticket) -> None:
        tickets = self._by_source[ticket.source]
        del tickets[ticket]
        if not tickets:
            del self._by_source[ticket.source]
        self._count -= 1


#: Drops logged one by one in each interval; the rest are summed up at its end.
DETAILED_DROPS = 5
#: Distinct reasons and sources counted per interval; beyond, they count as "other".
_MAX_KEYS = 1024
_TOP_SOURCES = 5


@attrs.frozen
class DropSummary:
    """What `DropLog.summary` reports: the drops not logged one by one in an interval."""

    count: int
    seconds: float
    reasons: dict[str, int]
    sources: list[tuple[str, int]]  # the top sources, most drops first

    def describe(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.reasons.items())
        sources = ", ".join(f"{source} ({n})" for source, n in self.sources)
        return (
            f"Connections dropped before authentication: {self.count} more in the last "
            f"{self.seconds:.0f} s ({reasons}); top sources: {sources}"
        )


class DropLog:
    """Connections dropped before authentication, for a log that stays bounded however many
    there are: `note` is True for the first `DETAILED_DROPS` of an interval (log those), and
    `summary` returns the rest once the interval has ended, counted by reason and source."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._since: float | None = None
        self._detailed = 0
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()

    def note(self, reason: str, source: str) -> bool:
        """Count one drop; True if it should be logged on its own."""
        if self._since is None:
            self._since = self._clock()
        if self._detailed < DETAILED_DROPS:
            self._detailed += 1
            return True
        _count(self._reasons, reason)
        _count(self._sources, source)
        return False

    def summary(self) -> DropSummary | None:
        """The drops of an interval that has ended and were not logged one by one, if any;
        a new interval starts with the next drop."""
        if self._since is None or self._clock() - self._since < self._interval:
            return None
        seconds = self._clock() - self._since
        count = sum(self._reasons.values())
        summary = DropSummary(
            count,
            seconds,
            dict(self._reasons.most_common()),
            self._sources.most_common(_TOP_SOURCES),
        )
        self._since, self._detailed = None, 0
        self._reasons.clear()
        self._sources.clear()
        return summary if count else None


def _count(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < _MAX_KEYS:
        counter[key] += 1
    else:
        counter["other"] += 1
