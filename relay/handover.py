# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Handing a forward's or SOCKS client to the worker process that holds its bridge.

Under ``bridge-relay serve --workers N`` every worker accepts on the same listeners, but an
agent's session lives in one worker. A worker that accepts a connection for a bridge it
holds no session of (or that is draining) passes the client's socket, with the bytes it
already read, to the worker that holds one (SCM_RIGHTS through the parent), instead of
relaying its bytes. A connection handed over once is served where it lands. A worker
without a session of a forward's bridge (without any session, for SOCKS) leaves the
connections in the listen backlog while another worker has one, so that few need a
handover at all.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from relay.worker_messages import Handover


class Handovers(Protocol):
    """What a worker's `Relay.handover` does (see `relay.worker.WorkerLink`)."""

    async def offer(self, client: trio.SocketStream, handover: Handover) -> bool:
        """Offer `client` to the worker that holds `handover.bridge`: True when another
        worker took it (close this copy, do nothing more), False when nobody holds it
        (serve it here: the relay answers as it does without workers). Never raises for
        a broken link (False then); cancelled, the connection is not offered further."""
        ...

    async def wait_to_accept(self, bridge: str | None) -> None:
        """Return once this worker should accept a connection for `bridge` (a forward's),
        or for any bridge (None: a SOCKS client, whose bridge is known only once its
        request is read): it holds a session of it (of any), or no worker does (then it
        answers, or the connection waits for a holder). Meanwhile connections wait in the
        listen backlog for the worker that holds one, so that most need no handover.
        Cancellable."""
        ...


async def hand_over(
    relay: Any,
    client: trio.SocketStream,
    bridge: str,
    kind: str,
    details: dict[str, Any],
    pending: bytes = b"",
) -> bool:
    """True when `client` was handed to another worker: the relay runs as a worker, and
    holds no session of `bridge` (nor one arriving), or is draining. False: serve it here."""
    handovers = relay.handover
    if handovers is None:
        return False
    held = relay.registry.sessions(bridge) or relay.registry.is_arriving(bridge)
    if held and not relay.stopping:
        return False
    return await handovers.offer(client, Handover(bridge, kind, details, pending))
