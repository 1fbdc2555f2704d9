# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A burst of concurrent ``relay.connect`` calls, for ``python -m bench tunnel``:
``python -m bench.connect_burst --data-dir DIR [--connect-timeout SECONDS]``.

The relay embedded in this process (`relay.Relay`, a `MemoryStore` with one bridge, default
`RelayConfig` but a bcrypt cost of 4 and the connect deadline given, as an embedding service
sets the one its callers can wait) listens for agents on 127.0.0.1 and prints one JSON
line: ``{"port", "bridge_id", "secret", "fingerprint"}``. The caller starts an agent with
them, then writes a line ``COUNT HOST PORT``: once the bridge is connected, COUNT tasks call
``connect(bridge, HOST, PORT)`` at once, each sends 32 bytes, waits for them to come back (an
echo server) and closes. Printed (one JSON line): served, failed (by error), the seconds until
the last was served, the connect deadline, and this process's VmRSS before and VmHWM after
(the relay's peak memory). Then it exits. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import trio

import relay
from bench.procs import memory_kib
from relay.certificates import ensure_self_signed, fingerprint, server_ssl_context
from relay.config import RelayConfig

BRIDGE = "bench"
MESSAGE = b"x" * 32
READY_SECONDS = 30.0
BURST_SECONDS = 300.0


async def _one(server: relay.Relay, host: str, port: int, tally: dict) -> None:
    try:
        stream = await server.connect(BRIDGE, host, port, caller="bench")
        async with stream:
            await stream.send_all(MESSAGE)
            got = b""
            while len(got) < len(MESSAGE):
                data = await stream.receive_some(len(MESSAGE) - len(got))
                if not data:
                    raise relay.RelayError("the tunnel closed before the reply")
                got += data
    except (relay.RelayError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        tally["errors"][f"{type(exc).__name__}: {exc}"] += 1
        return
    tally["served"] += 1
    tally["last"] = time.perf_counter()


async def _main(args: argparse.Namespace) -> None:
    cert, key = ensure_self_signed(args.data_dir)
    store = relay.MemoryStore()
    bridge_id, secret = store.create_bridge(BRIDGE, cost=4)
    config = RelayConfig(bcrypt_cost=4, connect_timeout=args.connect_timeout)
    server = relay.Relay(store, server_ssl_context(cert, key), config=config)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        ready = {
            "port": listeners[0].socket.getsockname()[1],
            "bridge_id": bridge_id,
            "secret": secret,
            "fingerprint": fingerprint(cert),
        }
        print(json.dumps(ready), flush=True)
        await trio.lowlevel.wait_readable(sys.stdin.fileno())
        line = sys.stdin.readline()
        count, host, port = line.split()
        with trio.move_on_after(READY_SECONDS):
            while not server.is_connected(BRIDGE):  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        tally: dict = {"served": 0, "errors": collections.Counter(), "last": None}
        before = memory_kib(None)
        start = time.perf_counter()
        with trio.move_on_after(BURST_SECONDS) as scope:
            async with trio.open_nursery() as burst:
                for _ in range(int(count)):
                    burst.start_soon(_one, server, host, int(port), tally)
        after = memory_kib(None)
        print(
            json.dumps(
                {
                    "done": tally["served"],
                    "failed": sum(tally["errors"].values()),
                    "unanswered": int(count) - tally["served"] - sum(tally["errors"].values()),
                    "errors": dict(tally["errors"].most_common(5)),
                    "seconds": None if tally["last"] is None else tally["last"] - start,
                    "timed_out": scope.cancelled_caught,
                    "connect_timeout": config.connect_timeout,
                    "rss_before_kib": before["VmRSS"],
                    "peak_kib": after["VmHWM"],
                }
            ),
            flush=True,
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_burst")
    parser.add_argument("--data-dir", required=True, help="where the relay's certificate goes")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=RelayConfig().connect_timeout,
        help="RelayConfig.connect_timeout: how long a call may wait for a slot, then for the "
        "agent's answer (default: the relay's default)",
    )
    trio.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
