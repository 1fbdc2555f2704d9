# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A hostile relay that tells every agent session to move, run as a process of its own::

    python -m tests.adversarial.mover_support --listen ADDRESS --cert PEM --key PEM \\
        --target HOST:PORT --seconds S

It welcomes every login as a node of its own (version 2, capabilities control, node and
move; node name ``mover-N``), at once sends the "move" control message, and opens a tunnel
to ``--target`` through the session that it never closes (so the session never finishes on
its own). Every second it prints ``sessions=N live=M``: logins so far, and sessions the agent
still keeps open. After ``--seconds`` it stops saying move, waits up to ``--settle``
seconds for the agent to log in again, opens a tunnel through that session, sends bytes
and prints ``round trip: ok`` (or why not), then ``done``.
"""

from __future__ import annotations

import argparse
import os

import trio

import mux
from bridge.protocol.connect import (
    ConnectReplyParser,
    ConnectRequest,
    ConnectStatus,
    encode_connect_request,
)
from bridge.protocol.control import ControlMessage, encode_control
from bridge.protocol.handshake import (
    CAPABILITIES,
    PROTOCOL_VERSION,
    HelloParser,
    Welcome,
    WelcomeStatus,
    encode_welcome,
)
from relay.certificates import server_ssl_context


class Mover:
    def __init__(self, args: argparse.Namespace) -> None:
        self.context = server_ssl_context(args.cert, args.key)
        host, port = args.target.rsplit(":", 1)
        self.target = ConnectRequest(host, int(port))
        self.logins = 0
        self.live: list[mux.Session] = []
        self.moving = True
        self.calm: list[mux.Session] = []  # sessions not told to move
        self.calm_arrived = trio.Event()

    async def tunnel(self, session: mux.Session) -> mux.Stream:
        stream = await session.open_stream()
        await stream.send_all(encode_connect_request(self.target))
        parser = ConnectReplyParser()
        while (reply := parser.feed(await stream.receive_some(4096))) is None:
            pass
        if reply.status != ConnectStatus.OK:
            raise OSError(f"the agent refused the tunnel: {reply.status.name} {reply.message}")
        return stream

    async def handle(self, tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            await tls.do_handshake()
            parser = HelloParser()
            while parser.feed(await tls.receive_some(4096)) is None:
                pass
            self.logins += 1
            info = {"capabilities": list(CAPABILITIES), "node": f"mover-{self.logins}"}
            await tls.send_all(
                encode_welcome(Welcome(WelcomeStatus.OK, "welcome", PROTOCOL_VERSION, info))
            )
            async with mux.open_session(tls, client=False) as session:
                control = await session.open_stream()
                if not self.moving:
                    self.calm.append(session)
                    self.calm_arrived.set()
                    await trio.sleep_forever()
                await control.send_all(encode_control(ControlMessage.move("moving on")))
                held = await self.tunnel(session)  # never closed by us
                self.live.append(session)
                try:
                    async for stream in session:  # until the agent closes the session
                        stream.reset()
                finally:
                    self.live.remove(session)
                    del held
        except (trio.BrokenResourceError, trio.ClosedResourceError, mux.MuxError, OSError):
            pass

    async def report(self) -> None:
        while True:
            await trio.sleep(1)
            print(f"sessions={self.logins} live={len(self.live)}", flush=True)

    async def check(self, settle: float) -> str:
        self.moving = False
        with trio.move_on_after(settle):
            await self.calm_arrived.wait()
        if not self.calm:
            return f"no new session within {settle:g} s"
        try:
            with trio.fail_after(10):
                stream = await self.tunnel(self.calm[0])
                payload = os.urandom(1024)
                await stream.send_all(payload)
                received = bytearray()
                while len(received) < len(payload):
                    if not (data := await stream.receive_some(4096)):
                        break
                    received += data
                await stream.aclose()
        except (trio.TooSlowError, OSError, mux.MuxError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok" if bytes(received) == payload else "wrong bytes"


async def main_async(args: argparse.Namespace) -> None:
    mover = Mover(args)
    listeners = await trio.open_tcp_listeners(0, host=args.listen)
    print(f"listening on {listeners[0].socket.getsockname()[1]}", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, mover.handle, listeners)
        nursery.start_soon(mover.report)
        await trio.sleep(args.seconds)
        print(f"moves over: sessions={mover.logins} live={len(mover.live)}", flush=True)
        print(f"round trip: {await mover.check(args.settle)}", flush=True)
        print("done", flush=True)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--settle", type=float, required=True)
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
