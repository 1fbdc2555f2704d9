# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bounded bookkeeping of refusals: a login rate limit per source address, and counters that
turn a flood of identical log lines into one line per interval. Clocks are injectable."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import attrs


def source_of(peer: str) -> str:
    """The address a peer `ip:port` (`[ipv6]:port`) is rate-limited by: the IPv4 address, or
    the /64 of an IPv6 address (one host usually holds a whole /64)."""
    host = peer.rpartition(":")[0].strip("[]") if ":" in peer else peer
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@attrs.define
class _Source:
    tokens: float
    stamp: float
    failures: int = 0  # since `since`
    since: float = 0.0
    limited: bool = False  # went over the limit since `since`


class LoginLimiter:
    """Login attempts that need a bcrypt check, per key (a source address, or a bridge ID):
    a token bucket each (`per_minute` tokens, refilled evenly over a minute), in an LRU of at
    most `size` keys. An attempt is `charge`d before its check starts, so attempts in flight
    count, and `refund`ed when it succeeds: only failures use the budget up. Forgetting a
    quiet key only gives it a full bucket again."""

    def __init__(
        self, per_minute: int, size: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._size = size
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def _entry(self, key: str) -> _Source:
        entry = self._sources.get(key)
        now = self._clock()
        if entry is None:
            entry = self._sources[key] = _Source(self._capacity, now)
            while len(self._sources) > self._size:
                self._sources.popitem(last=False)
        else:
            entry.tokens = min(self._capacity, entry.tokens + (now - entry.stamp) * self._rate)
            entry.stamp = now
        self._sources.move_to_end(key)
        return entry

    def allows(self, key: str) -> bool:
        """Whether an attempt from `key` could be charged now (nothing is taken)."""
        entry = self._sources.get(key)
        return entry is None or self._entry(key).tokens >= 1

    def charge(self, key: str) -> bool:
        """Take one attempt from `key`'s budget; False (and nothing taken) when it is spent."""
        entry = self._entry(key)
        if entry.tokens >= 1:
            entry.tokens -= 1
            return True
        self._note(entry, limited=True)
        return False

    def refund(self, key: str) -> None:
        """Give back an attempt that succeeded (or never ran)."""
        entry = self._sources.get(key)
        if entry is not None:
            entry.tokens = min(self._capacity, entry.tokens + 1)

    def failed(self, key: str) -> bool:
        """Record a failed login (already charged); True while `key` is within its limit."""
        entry = self._entry(key)
        self._note(entry, limited=False)
        return not entry.limited and entry.failures <= self._capacity

    def _note(self, entry: _Source, *, limited: bool) -> None:
        if not entry.failures:
            entry.since = entry.stamp
        entry.failures += 1
        entry.limited = entry.limited or limited

    def summaries(self, interval: float) -> list[tuple[str, int, float]]:
        """(source, failures, seconds) of each source that went over its limit in a window of
        `interval` seconds that has now ended; every ended window starts afresh."""
        now = self._clock()
        due = []
        for source, entry in self._sources.items():
            if entry.failures and now - entry.since >= interval:
                if entry.limited:
                    due.append((source, entry.failures, now - entry.since))
                entry.failures, entry.limited = 0, False
        return due


K = TypeVar("K", bound=Hashable)


class Repeats(Generic[K]):
    """Counts a repeating event per key: `note` is True for the first of a window (log it),
    `summaries` returns the rest once their window of `interval` seconds has ended."""

    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._windows: dict[K, tuple[float, int]] = {}  # key -> (since, count)

    def note(self, key: K) -> bool:
        """Count one event of `key`: True when it opens a window (log this one), False while one is
        open."""
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = (self._clock(), 0)
            return True
        self._windows[key] = (window[0], window[1] + 1)
        return False

    def summaries(self) -> list[tuple[K, int, float]]:
        """(key, events after the first, seconds) for each window that has ended with more."""
        now = self._clock()
        due = []
        for key, (since, count) in list(self._windows.items()):
            if now - since >= self._interval:
                del self._windows[key]
                if count:
                    due.append((key, count, now - since))
        return due
