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
    """Failed logins per source: a token bucket each (`per_minute` tokens, refilled evenly
    over a minute), in an LRU of at most `size` sources. Forgetting a quiet source only
    gives it a full bucket again."""

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

    def _refilled(self, source: str) -> _Source | None:
        entry = self._sources.get(source)
        if entry is not None:
            now = self._clock()
            entry.tokens = min(self._capacity, entry.tokens + (now - entry.stamp) * self._rate)
            entry.stamp = now
        return entry

    def allows(self, source: str) -> bool:
        """Whether a login from `source` may be checked (it has a failure left to spend)."""
        entry = self._refilled(source)
        return entry is None or entry.tokens >= 1

    def failed(self, source: str) -> bool:
        """Record a failed (or refused) login; True while `source` is within its limit."""
        entry = self._refilled(source)
        if entry is None:
            entry = self._sources[source] = _Source(self._capacity, self._clock())
            while len(self._sources) > self._size:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        if not entry.failures:
            entry.since = entry.stamp
        entry.failures += 1
        if entry.tokens >= 1:
            entry.tokens -= 1
            return True
        entry.limited = True
        return False

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
