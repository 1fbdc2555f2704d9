# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bridge secrets: generation, bcrypt hashing, and verification off the event loop.

Only bcrypt hashes are stored. Verification runs in a worker thread, costs the same for an
unknown bridge ID as for a known one (a dummy hash is checked instead), and remembers
credentials it has verified as an HMAC under a key that lives only in this process, so a
fleet of agents reconnecting at once is readmitted without one bcrypt run each. Identical
credentials presented at the same time (the agents of one bridge after a relay restart)
share one bcrypt run, and a run that has started finishes and is remembered even if the
connection that asked for it is gone, so that its retry costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext

import bcrypt
import trio

DEFAULT_COST = 12
MIN_COST = 4
MAX_COST = 31
# bcrypt only looks at the first 72 bytes; longer inputs are never valid secrets here.
_BCRYPT_MAX_INPUT = 72


def new_secret() -> str:
    """A fresh bridge secret: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def check_cost(cost: int) -> int:
    """`cost` if it is a bcrypt cost from MIN_COST to MAX_COST; else ValueError saying so."""
    if not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"bcrypt cost must be between {MIN_COST} and {MAX_COST}, not {cost}")
    return cost


def hash_secret(secret: str, cost: int = DEFAULT_COST) -> bytes:
    """The bcrypt hash to store for `secret` (blocking: call from a thread in async code)."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(check_cost(cost)))


def _checkpw(secret: bytes, hashed: bytes) -> bool:
    if len(secret) > _BCRYPT_MAX_INPUT:
        bcrypt.checkpw(secret[:_BCRYPT_MAX_INPUT], hashed)  # same work, known answer
        return False
    try:
        return bcrypt.checkpw(secret, hashed)
    except ValueError:  # a corrupt stored hash
        return False


class _Flight:
    """One bcrypt check in progress, shared by everyone presenting the same credentials."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: bool | None = None  # None: it did not run (its owner was cancelled)


class Verifier:
    """Checks presented secrets against stored bcrypt hashes.

    `cost` is the cost of the dummy hash checked for unknown bridge IDs: keep it equal to the
    cost the stored hashes were made with. `cache_size` bounds how many verified credentials
    are remembered (one entry per bridge). `threads` bounds the bcrypt checks run at once
    (default: one per CPU).
    """

    def __init__(
        self, *, cost: int = DEFAULT_COST, threads: int | None = None, cache_size: int = 10_000
    ) -> None:
        self._cost = check_cost(cost)
        self._limiter = trio.CapacityLimiter(threads or os.cpu_count() or 1)
        self._dummy: bytes | None = None
        self._preparing = trio.Lock()
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._flights: dict[bytes, _Flight] = {}

    def __repr__(self) -> str:
        return f"<Verifier cost={self._cost} cached={len(self._verified)}>"

    def _mac(self, bridge_id: str, stored_hash: bytes, secret: bytes) -> bytes:
        # The stored hash is part of the input, so a rotated secret never matches an old entry.
        message = b"\0".join([bridge_id.encode(), stored_hash, secret])
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def prepare(self) -> bytes:
        """Make the dummy hash now, so the first unknown ID costs no more than later ones;
        returns it. Made once: concurrent callers wait for the first."""
        if self._dummy is None:
            async with self._preparing:
                if self._dummy is None:
                    self._dummy = await self._run(hash_secret, new_secret(), self._cost)
        return self._dummy

    async def verify(
        self,
        bridge_id: str,
        stored_hash: bytes | None,
        secret: bytes,
        *,
        cached_only: bool = False,
        budget: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> bool:
        """True if `secret` matches `stored_hash` (None: the bridge does not exist).

        With `cached_only`, only credentials verified before are recognised (no bcrypt run).
        `budget()` is entered around each bcrypt run this call starts (not when it shares a
        run already going for the same credentials, nor for cached ones): whatever it raises
        (a refusal) propagates, and no check is made.
        """
        if stored_hash is None:
            if not cached_only:
                dummy = await self.prepare()
                await self._check(self._mac("", dummy, secret), secret, dummy, budget)
            return False
        mac = self._mac(bridge_id, stored_hash, secret)
        known = self._verified.get(bridge_id)
        if known is not None and hmac.compare_digest(known, mac):
            self._verified.move_to_end(bridge_id)
            return True
        if cached_only or not await self._check(mac, secret, stored_hash, budget):
            return False
        self._verified[bridge_id] = mac
        self._verified.move_to_end(bridge_id)
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return True

    async def _check(
        self,
        mac: bytes,
        secret: bytes,
        hashed: bytes,
        budget: Callable[[], AbstractAsyncContextManager[object]] | None,
    ) -> bool:
        """bcrypt, once for all who present these credentials at the same time."""
        while (flight := self._flights.get(mac)) is not None:
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
        flight = self._flights[mac] = _Flight()
        try:
            # Once the thread has started it runs to the end and its result is returned
            # even if the caller was cancelled meanwhile: the work is never thrown away.
            async with budget() if budget is not None else nullcontext():
                flight.result = await self._run(_checkpw, secret, hashed)
        finally:
            del self._flights[mac]
            flight.done.set()
        return flight.result

    def forget(self, bridge_id: str) -> None:
        """Drop what was verified for `bridge_id` (its secret changed or it was deleted)."""
        self._verified.pop(bridge_id, None)

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
