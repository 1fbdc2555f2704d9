# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""One replica of a Trio service that reaches its customers' private databases through their
bridges, with the relay embedded: run it once per replica, every replica with its own name
and data dir and all of them with the same PostgreSQL store.

    export RELAY_STORE=postgresql://relay@db.internal:5432/relay
    python replica.py --name api-1 --data-dir /var/lib/api-1 --cert relay.crt --key relay.key \
        --agents 0.0.0.0:4000 --peers 0.0.0.0:4100 --advertise api-1.internal:4100 \
        --service 127.0.0.1:7000

Agents may connect to any replica (give them all: RELAY_URL=tls://api-1:4000,tls://api-2:4000);
`relay.connect` on any replica reaches a bridge whose agent is connected to another one, over
the peer links between the replicas. The replicas share the certificate agents pin; each one
makes its own peer certificate in its data dir and registers it in the store.

The service itself is a stand-in for yours: a TCP front door where a client sends one line,
``BRIDGE HOST:PORT``, hears ``connected`` (or ``error: ...``, the relay's own words) and is
then connected to that target through that bridge.
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial

import trio

import relay
from bridge.ops.logs import configure
from bridge.protocol.addresses import format_host_port, parse_host_port
from bridge.transport.splice import splice_tunnel
from relay.certificates import PeerIdentity, server_ssl_context

MAX_LINE = 512


async def read_line(stream: trio.SocketStream) -> str:
    """The client's first line (bounded), without its newline."""
    line = b""
    while not line.endswith(b"\n"):
        data = await stream.receive_some(1)  # never read past the line: the rest is the tunnel's
        if not data or len(line) >= MAX_LINE:
            raise ValueError("expected one line: BRIDGE HOST:PORT")
        line += data
    return line.decode(errors="replace").strip()


async def front_door(node: relay.Relay, client: trio.SocketStream) -> None:
    """One client of the service: tunnel it to what its first line names."""
    async with client:
        try:
            bridge, target = (await read_line(client)).split(" ", 1)
            host, port = parse_host_port(target)
        except ValueError as exc:
            await client.send_all(f"error: {exc}\n".encode())
            return
        try:
            caller = format_host_port(*client.socket.getpeername()[:2])  # for the audit trail
            tunnel = await node.connect(bridge, host, port, caller=caller)
        except relay.RelayError as exc:
            await client.send_all(f"error: {exc}\n".encode())
            return
        async with tunnel:
            await client.send_all(b"connected\n")
            await splice_tunnel(client, tunnel)


async def main(args: argparse.Namespace) -> None:
    store = relay.PostgresStore(os.environ["RELAY_STORE"])
    node = relay.Relay(
        store,
        server_ssl_context(args.cert, args.key),
        config=relay.RelayConfig(node=args.name),
    )
    identity = PeerIdentity.ensure(args.data_dir)  # this replica's own peer key, made once
    try:
        async with trio.open_nursery() as nursery:
            # Agents dial this; `serve` also registers the node in the store and heartbeats.
            agents = await nursery.start(node.serve, *args.agents)
            # The other replicas dial this; it dials them in turn.
            peers = await nursery.start(
                partial(node.serve_peers, identity=identity, advertise=args.advertise),
                *args.peers,
            )
            host, port = args.service
            service = await nursery.start(
                partial(trio.serve_tcp, partial(front_door, node), port, host=host)
            )
            ports = [listeners[0].socket.getsockname()[1] for listeners in (agents, peers, service)]
            print("ready: agents {} peers {} service {}".format(*ports), flush=True)
    finally:
        store.close()


def parse_args() -> argparse.Namespace:
    def address(text: str) -> tuple[str, int]:
        return parse_host_port(text, allow_zero=True)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="this replica's node name")
    parser.add_argument("--data-dir", required=True, help="where its peer key is kept")
    parser.add_argument("--cert", required=True, help="the certificate agents pin (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--agents", type=address, default=("0.0.0.0", 4000))
    parser.add_argument("--peers", type=address, default=("0.0.0.0", 4100))
    parser.add_argument("--advertise", help="HOST:PORT the other replicas dial for --peers")
    parser.add_argument("--service", type=address, default=("127.0.0.1", 7000))
    return parser.parse_args()


if __name__ == "__main__":
    configure("INFO", "text")  # the relay logs through `logging`, as any library
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # the relay logs the store's state
    try:
        trio.run(main, parse_args())
    except KeyboardInterrupt:
        pass
