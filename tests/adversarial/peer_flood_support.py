# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A hostile relay node of a cluster, run as a process of its own::

    python -m tests.adversarial.peer_flood_support MODE BRIDGE-RELAY-ARGUMENTS...

It is a real `bridge-relay serve` (so it registers its peer certificate in the store and
passes the peer handshake), whose peer links misbehave once up, by MODE:

- ``presence``: sends presence messages without pause, each listing the most bridges one
  may (`MAX_PRESENCE_BRIDGES`), alternating between two lists;
- ``streams``: opens streams on the link without end, each an open request through the
  first bridge the other node holds (by its presence) to ``HOSTILE_TARGET`` (HOST:PORT, in
  the environment), and never reads the answer nor closes the stream.

Every second it prints ``sent=N`` (messages or streams so far) on stdout.
"""

from __future__ import annotations

import itertools
import os
import sys

import trio

import mux
from relay import peering
from relay.cli import main
from relay.peer_messages import (
    MAX_PRESENCE_BRIDGES,
    HeldBridge,
    OpenRequest,
    encode_open_request,
    encode_presence,
)

_sent = 0


async def _report() -> None:
    while True:
        await trio.sleep(1)
        print(f"sent={_sent}", flush=True)


async def flood_presence(self: peering.Peering, link: peering.PeerLink) -> None:
    global _sent
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report)
        lines = [
            encode_presence(
                [HeldBridge(f"{n}-{i:x}", f"n{n}-{i:x}", i) for i in range(MAX_PRESENCE_BRIDGES)]
            )
            for n in range(2)
        ]
        for line in itertools.cycle(lines):
            await link.control.send_all(line)
            _sent += 1


async def flood_streams(self: peering.Peering, link: peering.PeerLink) -> None:
    global _sent
    while not link.held:
        await trio.sleep(0.05)
    host, port = os.environ["HOSTILE_TARGET"].rsplit(":", 1)
    request = encode_open_request(OpenRequest(next(iter(link.held)), host, int(port)))
    held: list[mux.Stream] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report)
        while True:
            stream = await link.session.open_stream()
            await stream.send_all(request)
            held.append(stream)  # never read, never closed
            _sent += 1


def run() -> int:
    mode, argv = sys.argv[1], sys.argv[2:]
    peering.Peering._send_presence = {  # type: ignore[method-assign]
        "presence": flood_presence,
        "streams": flood_streams,
    }[mode]
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
