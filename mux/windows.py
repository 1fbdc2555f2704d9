# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Receive-side flow control of one stream, with RTT-driven window growth.

The peer may send ``credit`` more bytes. When the application has consumed at least half
of the window, the consumed bytes are credited back in one WindowUpdate (as hashicorp/yamux
does). If the previous update went out less than four RTTs ago, the window was the bottleneck:
it doubles, up to the configured maximum, as far as the session's budget allows.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import RemoteProtocolError
from .frames import INITIAL_WINDOW


class WindowBudget:
    """How much the windows of one session may still grow beyond their initial size."""

    __slots__ = ("available",)

    def __init__(self, size: int) -> None:
        self.available = size

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` bytes of growth; return how much was granted."""
        granted = min(wanted, self.available)
        self.available -= granted
        return granted

    def give_back(self, amount: int) -> None:
        """Return growth taken by a window that is gone."""
        self.available += amount


class ReceiveWindow:
    """How much the peer may still send on one stream, and when to credit it back."""

    __slots__ = ("credit", "epoch", "size", "unacknowledged")

    def __init__(self) -> None:
        self.size = INITIAL_WINDOW
        self.credit = INITIAL_WINDOW
        self.unacknowledged = 0
        self.epoch = 0.0

    def receive(self, length: int) -> None:
        """The peer sent ``length`` bytes. Raises `RemoteProtocolError` beyond the window."""
        if length > self.credit:
            raise RemoteProtocolError(
                f"peer sent {length} bytes with only {self.credit} left in the receive window"
            )
        self.credit -= length

    def consume(
        self,
        amount: int,
        clock: Callable[[], float],
        rtt: float,
        max_size: int,
        budget: WindowBudget,
    ) -> int:
        """Record that the application read ``amount`` bytes; return the delta to send (or 0)."""
        self.unacknowledged += amount
        if self.unacknowledged < self.size >> 1:
            return 0
        now = clock()
        delta = self.unacknowledged
        if rtt > 0 and self.size < max_size and now - self.epoch < 4 * rtt:
            grow = budget.take(min(self.size * 2, max_size) - self.size)
            self.size += grow
            delta += grow
        self.epoch = now
        self.unacknowledged = 0
        self.credit += delta
        return delta

    def grown(self) -> int:
        """How much this window took from the session's budget."""
        return self.size - INITIAL_WINDOW
