# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Exponential backoff with full jitter, for reconnecting.

The n-th delay (from 0) is drawn uniformly from ``[0, min(maximum, initial * 2**n))``, so a
fleet of agents that lost the same relay comes back spread out rather than in one wave.
"""

from __future__ import annotations

import random


class Backoff:
    """``next()`` is the delay before the next attempt; ``reset()`` after a healthy session."""

    def __init__(
        self, maximum: float = 30.0, *, initial: float = 1.0, rng: random.Random | None = None
    ) -> None:
        if not (initial > 0 and maximum > 0):
            raise ValueError("backoff durations must be positive")
        self.initial = initial
        self.maximum = maximum
        self.attempts = 0
        self._random = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may wait."""
        # The exponent is capped so that it cannot overflow: the maximum is reached long before.
        return min(self.maximum, self.initial * 2 ** min(self.attempts, 64))

    def next(self) -> float:
        """The delay before the next attempt, drawn at random below `ceiling`; counts the
        attempt."""
        delay = self._random.uniform(0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start over from the shortest delays (after a healthy session)."""
        self.attempts = 0
