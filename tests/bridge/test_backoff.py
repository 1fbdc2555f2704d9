# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import random

import pytest

from bridge.agent.backoff import Backoff


class Highest(random.Random):
    """Always draws the top of the range: the delays are the ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_ceilings_double_up_to_the_maximum():
    backoff = Backoff(30, rng=Highest())
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_reset_starts_over():
    backoff = Backoff(30, rng=Highest())
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() == 1


def test_first_retry_within_one_second_and_full_jitter():
    backoff = Backoff(30, rng=random.Random(4))
    first = []
    for _ in range(1000):
        backoff.reset()
        first.append(backoff.next())
    assert all(0 <= delay <= 1 for delay in first)
    assert min(first) < 0.1 and max(first) > 0.9  # spread over the whole range


def test_small_maximum_caps_even_the_first_retry():
    backoff = Backoff(0.2)
    assert all(backoff.next() <= 0.2 for _ in range(100))


def test_many_failures_do_not_overflow():
    backoff = Backoff(30, rng=Highest())
    backoff.attempts = 10_000
    assert backoff.next() == 30


@pytest.mark.parametrize("maximum, initial", [(0, 1), (-1, 1), (30, 0)])
def test_durations_must_be_positive(maximum, initial):
    with pytest.raises(ValueError):
        Backoff(maximum, initial=initial)


def test_a_floor_keeps_every_delay_at_least_that_fraction_of_its_ceiling():
    backoff = Backoff(8, floor=0.5, rng=random.Random(7))
    for _ in range(50):
        backoff.reset()
        delays = [backoff.next() for _ in range(6)]
        ceilings = [1, 2, 4, 8, 8, 8]
        assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_the_floor_is_a_fraction(floor):
    with pytest.raises(ValueError):
        Backoff(30, floor=floor)
