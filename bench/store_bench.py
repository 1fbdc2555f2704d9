# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""``python -m bench store --store postgresql://...``: two ways to reach PostgreSQL from Trio.

threads: what the relay does: `PostgresStore.find` (psycopg, psycopg_pool) in worker threads,
    at most N at once (`relay.store.access.StoreAccess`).
nonblocking: libpq's non-blocking API through psycopg.pq on N connections, each query's
    socket waited on with trio.lowlevel.wait_readable/wait_writable: no thread. The rows are
    not converted to Python values (the threads path does convert them), so this path is
    favoured.

Each runs C tasks looking bridges up by ID for D seconds; meanwhile a probe task sleeps 1 ms
in a loop and records how late it wakes (the event loop's latency). Reported: lookups/s,
and the probe's lateness (p50, p99, max) without load and under each path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import psycopg
import trio

from relay.store.access import StoreAccess
from relay.store.postgres import PostgresConfig, PostgresStore

BRIDGES = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URL", help="postgresql:// URL")
    parser.add_argument("--seconds", type=float, default=5.0, help="per path (default 5)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent lookups (default 64)")
    parser.add_argument(
        "--connections", type=int, default=4, help="threads = connections (default 4)"
    )


def _percentiles(lags: list[float]) -> tuple[float, float, float]:
    lags = sorted(lags) or [0.0]
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    return statistics.median(lags) * 1000, p99 * 1000, lags[-1] * 1000


async def _measure(
    lookup: Callable[[str], Awaitable[object]] | None, ids: list[str], args
) -> tuple[float, tuple[float, float, float]]:
    done = 0
    lags: list[float] = []

    async def probe() -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(0.001)
            lags.append(trio.current_time() - start - 0.001)

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while True:
            await lookup(ids[i % len(ids)])
            done += 1
            i += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        if lookup is not None:
            for n in range(args.tasks):
                nursery.start_soon(worker, n)
        started = time.perf_counter()
        await trio.sleep(args.seconds)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return done / elapsed, _percentiles(lags)


class _NonBlocking:
    """N libpq connections in non-blocking mode, handed out through a channel."""

    SQL = b"SELECT id, name, secret_hash, created_at, last_seen_at FROM bridges WHERE id = $1"

    def __init__(self, dsn: str, n: int) -> None:
        self.conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
        self.send, self.receive = trio.open_memory_channel[psycopg.Connection](n)
        for conn in self.conns:
            conn.pgconn.nonblocking = 1
            self.send.send_nowait(conn)

    async def find(self, bridge_id: str) -> list:
        conn = await self.receive.receive()
        try:
            pgconn = conn.pgconn
            fd = pgconn.socket
            pgconn.send_query_params(self.SQL, [bridge_id.encode()])
            while pgconn.flush():
                await trio.lowlevel.wait_writable(fd)
            rows = []
            while True:
                while pgconn.is_busy():
                    await trio.lowlevel.wait_readable(fd)
                    pgconn.consume_input()
                result = pgconn.get_result()
                if result is None:
                    return rows
                rows.extend(result.get_value(r, 0) for r in range(result.ntuples))
        finally:
            self.send.send_nowait(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def run(args: argparse.Namespace) -> int:
    store = PostgresStore(args.store, config=PostgresConfig(max_connections=args.connections))
    ids = [record.id for record in store.list()]
    for n in range(len(ids), BRIDGES):
        ids.append(store.create_bridge(f"bench-{n}", cost=4)[0])
    nonblocking = _NonBlocking(args.store, args.connections)
    access = StoreAccess(store, threads=args.connections)

    async def threads(bridge_id: str) -> object:
        return await access.run(store.find, bridge_id)

    async def main() -> list[tuple[str, float, tuple[float, float, float]]]:
        rows = [("idle", *await _measure(None, ids, args))]
        rows.append(("threads", *await _measure(threads, ids, args)))
        rows.append(("nonblocking", *await _measure(nonblocking.find, ids, args)))
        return rows

    try:
        rows = trio.run(main)
    finally:
        nonblocking.close()
        store.close()
    print(
        f"{args.tasks} tasks, {args.connections} connections, {args.seconds:g} s per path\n"
        f"{'path':<12} {'lookups/s':>10} {'lag p50 ms':>11} {'lag p99 ms':>11} {'lag max ms':>11}"
    )
    for name, rate, (p50, p99, worst) in rows:
        print(f"{name:<12} {rate:>10.0f} {p50:>11.2f} {p99:>11.2f} {worst:>11.2f}")
    return 0
