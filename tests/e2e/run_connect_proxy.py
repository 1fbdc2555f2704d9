# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The tests' CONNECT proxy (tests/bridge/connect_proxy.py) as a process on 127.0.0.1.

``python -m tests.e2e.run_connect_proxy [USER PASSWORD]``, run from the repository root, prints
``listening on PORT``, then ``CONNECT HOST:PORT`` for each request it reads and ``tunnels N``
whenever the number of tunnels it opened changes.
"""

from __future__ import annotations

import sys

import trio

from ..bridge.connect_proxy import ConnectProxy

REPORT_INTERVAL = 0.02


async def main(username: str | None = None, password: str = "") -> None:
    proxy = ConnectProxy(username, password)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        print(f"listening on {proxy.port}", flush=True)
        requests = tunnels = 0
        while True:
            for target, _ in proxy.requests[requests:]:
                print(f"CONNECT {target}", flush=True)
            requests = len(proxy.requests)
            if proxy.tunnels != tunnels:
                tunnels = proxy.tunnels
                print(f"tunnels {tunnels}", flush=True)
            await trio.sleep(REPORT_INTERVAL)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
