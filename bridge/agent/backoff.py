# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Exponential backoff with full jitter, for reconnecting.

The n-th delay (from 0) is drawn uniformly from ``[floor * c, c)`` where
``c = min(maximum, initial * 2**n)``, so a fleet of agents that lost the same relay comes back
spread out rather than in one wave. Reconnects use full jitter (``floor=0``); a floor of 0.5
bounds how often the attempts can come, whatever the draws.
"""

from __future__ import annotations

import random


class Backoff:
    """``next()`` is the delay before the next attempt; ``reset()`` after a healthy session."""

    def __init__(
        self,
        maximum: float = 30.0,
        *,
        initial: float = 1.0,
        floor: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not (initial > 0 and maximum > 0):
            raise ValueError("backoff durations must be positive")
        if not 0 <= floor <= 1:
            raise ValueError("the backoff floor is a fraction of the ceiling, from 0 to 1")
        self.initial = initial
        self.floor = floor
        self.maximum = maximum
        self.attempts = 0
        self._random = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt may wait."""
        # The exponent is capped so that it cannot overflow: the maximum is reached long before.
        return min(self.maximum, self.initial * 2 ** min(self.attempts, 64))

    def next(self) -> float:
        """The delay before the next attempt, drawn at random between ``floor`` times
        `ceiling` and `ceiling`; counts the attempt."""
        ceiling = self.ceiling()
        delay = self._random.uniform(self.floor * ceiling, ceiling)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start over from the shortest delays (after a healthy session)."""
        self.attempts = 0
