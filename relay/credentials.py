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

Costs only go up: a secret stored with a lower cost than the relay's is rehashed at the
relay's cost at its next successful login (same salt, so the relay can tell a rehash from a
rotation, see `same_secret`), and unknown IDs are checked against a dummy hash of the highest
cost in use, so that how long a refusal takes does not tell whether an ID exists.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
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


def cost_of(hashed: bytes) -> int | None:
    """The cost of a bcrypt hash (``$2b$12$...``), None if it is not one."""
    prefix = hashed[:7]
    if len(prefix) != 7 or prefix[:1] != b"$" or prefix[3:4] != b"$" or prefix[6:7] != b"$":
        return None
    return int(prefix[4:6]) if prefix[4:6].isdigit() else None


def rehash_secret(secret: bytes, hashed: bytes, cost: int) -> bytes:
    """`hashed` (which `secret` matches) made again at `cost`, keeping its salt (blocking)."""
    return bcrypt.hashpw(secret[:_BCRYPT_MAX_INPUT], b"$2b$%02d$" % check_cost(cost) + hashed[7:29])


def same_secret(old: bytes, new: bytes) -> bool:
    """Whether stored hash `new` replaced `old` without a new secret: the same hash, or a
    rehash at a higher cost (same salt). A rotation always draws a new random salt."""
    if old == new:
        return True
    old_cost, new_cost = cost_of(old), cost_of(new)
    return (
        old_cost is not None
        and new_cost is not None
        and new_cost > old_cost
        and len(old) == len(new) == 60
        and old[7:29] == new[7:29]
    )


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

    `cost` is the relay's cost: secrets stored with less are rehashed at it (`rehash`), and
    the dummy hash checked for unknown bridge IDs has at least it (`note_costs` raises it to
    the highest cost in the store). `cache_size` bounds how many verified credentials
    are remembered (one entry per bridge). `threads` bounds the bcrypt checks run at once
    (default: one per CPU).
    """

    def __init__(
        self, *, cost: int = DEFAULT_COST, threads: int | None = None, cache_size: int = 10_000
    ) -> None:
        self._cost = check_cost(cost)
        self._dummy_cost = self._cost
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

    def note_costs(self, costs: Iterable[int | None]) -> None:
        """The costs of the stored hashes: unknown IDs are checked at the highest of them (or
        the relay's cost, if higher), so as to take as long as the slowest known ID."""
        cost = max([self._cost, *(c for c in costs if c is not None)])
        if cost != self._dummy_cost:
            self._dummy_cost, self._dummy = cost, None

    async def prepare(self) -> bytes:
        """Make the dummy hash now, so the first unknown ID costs no more than later ones;
        returns it. Made once: concurrent callers wait for the first."""
        while (dummy := self._dummy) is None:
            async with self._preparing:
                if self._dummy is None:
                    cost = self._dummy_cost
                    made = await self._run(hash_secret, new_secret(), cost)
                    if cost == self._dummy_cost:  # else the costs changed meanwhile: again
                        self._dummy = made
        return dummy

    async def rehash(self, bridge_id: str, stored_hash: bytes, secret: bytes) -> bytes | None:
        """`stored_hash` made again at the relay's cost, if it has less (None if not), for a
        secret `verify` has just accepted; the new hash is remembered as verified."""
        cost = cost_of(stored_hash)
        if cost is None or cost >= self._cost:
            return None
        hashed = await self._run(rehash_secret, secret, stored_hash, self._cost)
        self._verified[bridge_id] = self._mac(bridge_id, hashed, secret)
        return hashed

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
