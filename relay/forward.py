# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Local forwards: a TCP listener whose connections are tunneled to HOST:PORT through a bridge."""

from __future__ import annotations

import logging
import time

import attrs
import trio

from bridge.protocol.addresses import format_host_port, format_socket_address, parse_host_port
from bridge.protocol.connect import ConnectRequest
from bridge.transport.splice import splice_tunnel
from relay.audit import Caller
from relay.errors import RelayError, RelayShuttingDown
from relay.handover import hand_over
from relay.os_limits import listen_backlog

log = logging.getLogger("relay.forward")


@attrs.frozen
class ForwardSpec:
    """`BRIDGE=HOST:PORT[@LISTEN_HOST:LISTEN_PORT]`: listen locally, tunnel to HOST:PORT."""

    bridge: str
    host: str
    port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0

    @classmethod
    def parse(cls, text: str) -> ForwardSpec:
        """``BRIDGE=HOST:PORT[@LISTEN_HOST:LISTEN_PORT]`` -> a ForwardSpec (listening on
        127.0.0.1, any free port, unless given). Raises ValueError with a one-line message."""
        bridge, sep, rest = text.partition("=")
        if not sep or not bridge:
            raise ValueError(
                f"invalid forward {text!r}: expected BRIDGE=HOST:PORT[@LISTEN_HOST:LISTEN_PORT]"
            )
        target, sep, listen = rest.partition("@")
        host, port = parse_host_port(target)
        ConnectRequest(host, port)  # what the agent will be sent must be valid
        if not sep:
            return cls(bridge, host, port)
        listen_host, listen_port = parse_host_port(listen, allow_zero=True)
        return cls(bridge, host, port, listen_host, listen_port)

    @property
    def target(self) -> str:
        """``HOST:PORT`` of the target, IPv6 in brackets."""
        return format_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.bridge} -> {self.target}"

    def describe(self, client: trio.SocketStream) -> str:
        """The forward as `--forward` takes it, with the port it listens on: the caller's
        name in the audit trail."""
        try:
            port = client.socket.getsockname()[1]
        except OSError:
            port = self.listen_port
        return f"{self.bridge}={self.target}@{format_host_port(self.listen_host, port)}"


async def serve_forward(
    relay,
    spec: ForwardSpec,
    *,
    index: int = 0,
    listeners: list[trio.SocketListener] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
):
    """Listen on spec's local address (or serve `listeners`, bound elsewhere) and tunnel each
    connection; `task_status` gets the listeners. The listener closes when the relay stops
    accepting; connections in go on. While the bridge has `max_pending_opens` opens in
    flight, no connection is accepted (the listen backlog, `listen_backlog()`, holds them).
    `index` is the forward's place among the relay's forwards: a worker that hands a
    connection to another names the forward by it."""
    if listeners is None:
        listeners = await trio.open_tcp_listeners(
            spec.listen_port, host=spec.listen_host, backlog=listen_backlog()
        )

    async def handle(client: trio.SocketStream) -> None:
        try:
            await forward_connection(relay, spec, client, index=index)
        except Exception:
            log.exception("Forwarded connection failed", extra={"fields": {"forward": str(spec)}})

    # At the bridge's limit of opens in flight, stop accepting: a burst waits in the
    # listen backlog instead of being accepted and refused.
    # Under workers, one without a session of the bridge leaves the connections to the one
    # with it while there is one.
    async def ready() -> None:
        if relay.handover is not None:
            await relay.handover.wait_to_accept(spec.bridge)
        await relay.wait_for_open_slot(spec.bridge)

    await relay.serve_listeners(handle, listeners, ready=ready, task_status=task_status)


async def forward_connection(
    relay, spec: ForwardSpec, client: trio.SocketStream, *, index: int | None = None
) -> None:
    """Tunnel one accepted `client` connection to the spec's target, then close it; a refused
    tunnel (logged by the relay) closes it at once. Raises nothing for a client or tunnel that
    breaks (the tunnel is reset then); cancelled, it resets the tunnel and closes the client.
    With `index` (the forward's place, see `serve_forward`), a worker that does not hold
    the bridge hands the client to the one that does (`relay.handover`); without, a
    connection is served here."""
    async with client:
        try:
            peer = format_socket_address(client.socket.getpeername())
        except OSError:
            return
        if index is not None and await hand_over(
            relay, client, spec.bridge, "forward", {"index": index}
        ):
            return
        started = time.monotonic()
        try:
            caller = Caller("forward", spec.describe(client), address=peer)
            remote = await relay.connect(spec.bridge, spec.host, spec.port, caller=caller)
        except RelayShuttingDown:
            # Nothing reached the target: a worker that began to drain since the check
            # above hands the client to the bridge's next holder.
            if index is not None:
                await hand_over(relay, client, spec.bridge, "forward", {"index": index})
            return
        except RelayError:
            return  # the relay has logged the refusal and its reason
        async with remote:
            sent, received, clean = await splice_tunnel(client, remote)
        if not log.isEnabledFor(logging.DEBUG):  # the fields cost more than the check
            return
        log.debug(
            "Forwarded connection closed",
            extra={
                "fields": {
                    "bridge": spec.bridge,
                    "target": spec.target,
                    "client": peer,
                    "bytes": sent + received,
                    "bytes_sent": sent,
                    "bytes_received": received,
                    "duration": round(time.monotonic() - started, 3),
                    "clean": clean,
                }
            },
        )
