# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Hostile yamux peers for the adversarial tests, run as processes of their own so that the
test measures its victims without sharing an event loop with the attacker::

    python -m tests.adversarial.flood_support agent  --relay HOST:PORT --source ADDRESS \\
        --fingerprint FP --seconds S           (BRIDGE_ID, BRIDGE_SECRET in the environment)
    python -m tests.adversarial.flood_support relay  --listen ADDRESS --cert PEM --key PEM \\
        --seconds S

Both log in as the real thing (a valid Hello; a Welcome), then flood control frames: PINGs,
and SYNs for streams they never read (the agent) or SYN+RST pairs (the relay), as fast as the
victim reads them, while reading what the victim sends slowly (4 KiB every 50 ms, enough for
any write deadline) and answering the victim's pings, as a live peer does. Every second they
print ``sent=BYTES received=BYTES`` on stdout; ``ended: REASON`` when the victim cut them off.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

import trio

from bridge.protocol.handshake import (
    Hello,
    HelloParser,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
    encode_welcome,
)
from bridge.transport.tls import client_ssl_context
from relay.certificates import server_ssl_context

HEADER = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING = 0, 1, 2
SYN, ACK, RST = 1, 2, 8
READ_SIZE = 4096
READ_PACE = 0.05
FRAMES_PER_WRITE = 4096


class Flood:
    """The flood over one logged-in connection; ``first_id`` picks our stream IDs."""

    def __init__(self, stream: trio.abc.Stream, first_id: int, *, reset_streams: bool) -> None:
        self.stream = stream
        self.next_id = first_id
        self.reset_streams = reset_streams
        self.answers: list[bytes] = []
        self.sent = 0
        self.received = 0
        self.opaque = 0

    def batch(self) -> bytes:
        frames = self.answers
        self.answers = []
        for index in range(FRAMES_PER_WRITE):
            if index % 4:
                self.opaque = (self.opaque + 1) & 0xFFFFFFFF
                frames.append(HEADER.pack(0, PING, SYN, 0, self.opaque))
            else:
                frames.append(HEADER.pack(0, WINDOW_UPDATE, SYN, self.next_id, 0))
                if self.reset_streams:
                    frames.append(HEADER.pack(0, WINDOW_UPDATE, RST, self.next_id, 0))
                self.next_id += 2
        return b"".join(frames)

    async def send_forever(self) -> None:
        while True:
            blob = self.batch()
            await self.stream.send_all(blob)
            self.sent += len(blob)

    async def read_slowly(self) -> None:
        """Read 4 KiB every 50 ms; answer the victim's pings (after the current write)."""
        buffer = bytearray()
        skip = 0  # payload bytes of a Data frame still to drop
        while True:
            chunk = await self.stream.receive_some(READ_SIZE)
            if not chunk:
                raise EOFError("the victim closed the connection")
            self.received += len(chunk)
            buffer += chunk
            while True:
                if skip:
                    dropped = min(skip, len(buffer))
                    del buffer[:dropped]
                    skip -= dropped
                    if skip:
                        break
                if len(buffer) < HEADER.size:
                    break
                _, type_, flags, _, length = HEADER.unpack_from(buffer)
                del buffer[: HEADER.size]
                if type_ == DATA:
                    skip = length
                elif type_ == PING and flags & SYN:
                    self.answers.append(HEADER.pack(0, PING, ACK, 0, length))
                elif type_ == 3:
                    raise EOFError(f"the victim sent GoAway code {length}")
            await trio.sleep(READ_PACE)

    async def report(self) -> None:
        while True:
            await trio.sleep(1)
            print(f"sent={self.sent} received={self.received}", flush=True)

    async def run(self, seconds: float) -> None:
        reason = f"still flooding after {seconds} s"
        with trio.move_on_after(seconds):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.report)
                    nursery.start_soon(self.read_slowly)
                    await self.send_forever()
            except* (EOFError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                reason = "; ".join(str(exc) or type(exc).__name__ for exc in group.exceptions)
        print(f"sent={self.sent} received={self.received}", flush=True)
        print(f"ended: {reason}", flush=True)


async def hostile_agent(args: argparse.Namespace) -> None:
    host, port = args.relay.rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port), local_address=args.source)
    tls = trio.SSLStream(tcp, client_ssl_context(fingerprint=args.fingerprint))
    await tls.do_handshake()
    await tls.send_all(encode_hello(Hello(os.environ["BRIDGE_ID"], os.environ["BRIDGE_SECRET"])))
    parser = WelcomeParser()
    while (welcome := parser.feed(await tls.receive_some())) is None:
        pass
    if welcome.status != WelcomeStatus.OK:
        sys.exit(f"login refused: {welcome.status.name} {welcome.message}")
    print("logged in", flush=True)
    await Flood(tls, 1, reset_streams=False).run(args.seconds)


async def hostile_relay(args: argparse.Namespace) -> None:
    context = server_ssl_context(args.cert, args.key)
    listeners = await trio.open_tcp_listeners(0, host=args.listen)
    print(f"listening on {listeners[0].socket.getsockname()[1]}", flush=True)
    tcp = await listeners[0].accept()
    tls = trio.SSLStream(tcp, context, server_side=True)
    await tls.do_handshake()
    parser = HelloParser()
    while parser.feed(await tls.receive_some()) is None:
        pass
    await tls.send_all(encode_welcome(Welcome(WelcomeStatus.OK)))
    print("agent logged in", flush=True)
    await Flood(tls, 2, reset_streams=True).run(args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    agent = roles.add_parser("agent")
    agent.add_argument("--relay", required=True)
    agent.add_argument("--source", required=True)
    agent.add_argument("--fingerprint", required=True)
    agent.add_argument("--seconds", type=float, required=True)
    relay = roles.add_parser("relay")
    relay.add_argument("--listen", required=True)
    relay.add_argument("--cert", required=True)
    relay.add_argument("--key", required=True)
    relay.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    trio.run(hostile_agent if args.role == "agent" else hostile_relay, args)


if __name__ == "__main__":
    main()
