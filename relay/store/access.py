# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's way to its store: calls in a bounded pool of worker threads, and one log line
each time the store becomes unreachable or reachable again (never one per failed call)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from relay.errors import StoreError
from relay.store.records import Store

log = logging.getLogger("relay.store")

T = TypeVar("T")


class StoreAccess:
    """Runs `Store` methods off the event loop, at most `threads` at once.

    Measured against PostgreSQL on loopback, worker threads and psycopg's pool serve a few
    thousand lookups per second with the event loop's latency unchanged; see the README.
    `healthy` is False from a StoreError until the next call that succeeds; each change is
    logged once, at WARNING when the store is lost and INFO when it is back. A call that
    started before the store came back and fails after is not taken as a new loss.
    """

    def __init__(self, store: Store, *, threads: int) -> None:
        self.store = store
        self.healthy = True
        self._limiter = trio.CapacityLimiter(threads)
        self._back_at = -float("inf")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread. Raises what fn raises. Cancellation returns at
        once; the thread finishes on its own (its result is dropped) and holds its slot
        until then."""
        started = trio.current_time()
        try:
            result = await trio.to_thread.run_sync(
                fn, *args, limiter=self._limiter, abandon_on_cancel=True
            )
        except StoreError as exc:
            if started >= self._back_at:
                self.failed(exc)
            raise
        self.succeeded()
        return result

    def failed(self, exc: StoreError) -> None:
        """Note that the store failed (logged only if it was healthy until now)."""
        if self.healthy:
            self.healthy = False
            log.warning(
                "Bridge store unreachable: admitted bridges are served from memory, "
                "writes are retried",
                extra={"fields": {"reason": str(exc)}},
            )

    def succeeded(self) -> None:
        """Note that the store answered (logged only if it had failed)."""
        if not self.healthy:
            self.healthy = True
            self._back_at = trio.current_time()
            log.info("Bridge store reachable again")
