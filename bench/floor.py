# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What one Python process costs to forward a connection, with no TLS and no multiplexer: the
floor under any relay or agent written in Python, for ``python -m bench tunnel``.

``python -m bench.floor MODE NAME=PORT...`` listens on one port of 127.0.0.1 per target and
forwards each connection to that target's port, printing ``{"NAME": PORT, ...}`` once it
listens. MODE is the design of the forwarder:

trio-stream   Trio as an application uses it: one task per direction, `SocketStream`
              `receive_some` / `send_all`, a nursery per connection.
trio-wait     The least a Trio data path can do: one task per direction, each waking through
              `trio.lowlevel.wait_readable` and calling the socket's own recv and send, with no
              checkpoint of its own. Any Trio design that wakes a task per message costs this.
epoll         CPython with no Trio: one level-triggered `select.epoll` loop for everything.

Measured as paths ``floor-trio``, ``floor-trio-wait`` and ``floor-epoll`` by the costs case,
the CPU per message and per new connection of these processes is what a design of that kind
spends before it does any work of its own (TLS, yamux, allow-lists, metrics).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
from pathlib import Path

from bench.paths import HOST, BenchPath, echo_ready
from bench.procs import Proc, python_module

RECEIVE_SIZE = 64 * 1024


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)
    return sock


def _announce(listeners: dict[str, socket.socket]) -> None:
    ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
    print(json.dumps(ports), flush=True)


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_trio(targets: dict[str, int], *, raw: bool) -> None:
    import trio
    from trio.lowlevel import wait_readable, wait_writable

    async def pump_stream(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(RECEIVE_SIZE):
                await dst.send_all(data)
            await dst.send_eof()

    async def pump_raw(src: socket.socket, dst: socket.socket) -> None:
        while True:
            await wait_readable(src)
            try:
                data = src.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            view = memoryview(data)
            while view:
                try:
                    view = view[dst.send(view) :]
                except BlockingIOError:
                    await wait_writable(dst)
                except OSError:
                    return

    async def forward(client: trio.SocketStream, port: int) -> None:
        with contextlib.suppress(OSError, trio.BrokenResourceError):
            await connect_and_pump(client, port)

    async def connect_and_pump(client: trio.SocketStream, port: int) -> None:
        with trio.socket.socket() as target_sock:
            await target_sock.connect((HOST, port))
            target = trio.SocketStream(target_sock)
            async with client, trio.open_nursery() as nursery:
                if raw:
                    a = client.socket._sock  # type: ignore[attr-defined]
                    b = target_sock._sock  # type: ignore[attr-defined]
                    nursery.start_soon(pump_raw, a, b)
                    nursery.start_soon(pump_raw, b, a)
                else:
                    nursery.start_soon(pump_stream, client, target)
                    nursery.start_soon(pump_stream, target, client)

    async def serve(listener: socket.socket, port: int) -> None:
        trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
        await trio.serve_listeners(lambda stream: forward(stream, port), [trio_listener])

    async def main() -> None:
        listeners = {name: _listen() for name in targets}
        _announce(listeners)
        async with trio.open_nursery() as nursery:
            for name, sock in listeners.items():
                nursery.start_soon(serve, sock, targets[name])

    trio.run(main)


def run_epoll(targets: dict[str, int]) -> None:
    """One level-triggered loop; a short write blocks until the target takes the rest (the
    targets always read, so this only ever waits for the kernel)."""
    poller = select.epoll()
    listeners = {name: _listen() for name in targets}
    by_fd: dict[int, tuple[socket.socket, socket.socket | int]] = {}
    for name, sock in listeners.items():
        sock.setblocking(False)
        by_fd[sock.fileno()] = (sock, targets[name])
        poller.register(sock.fileno(), select.EPOLLIN)
    _announce(listeners)
    while True:
        for fd, _ in poller.poll():
            sock, peer = by_fd.get(fd, (None, 0))
            if sock is None:
                continue
            if isinstance(peer, int):
                try:
                    client, _ = sock.accept()
                except BlockingIOError:
                    continue
                target = _nodelay(socket.create_connection((HOST, peer)))
                for one, other in ((_nodelay(client), target), (target, client)):
                    one.setblocking(False)
                    by_fd[one.fileno()] = (one, other)
                    poller.register(one.fileno(), select.EPOLLIN)
                continue
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                peer.setblocking(True)
                try:
                    peer.sendall(data)
                except OSError:
                    data = b""
                peer.setblocking(False)
            if not data:  # this direction is done: half-close it; close both once both are
                poller.unregister(fd)
                with contextlib.suppress(OSError):
                    peer.shutdown(socket.SHUT_WR)
                if peer.fileno() not in by_fd:
                    sock.close()
                    peer.close()
                del by_fd[fd]


MODES = ("trio-stream", "trio-wait", "epoll")


class FloorPath(BenchPath):
    """One `python -m bench.floor MODE` process between the load and the targets."""

    mode = ""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        super().__init__(workdir, targets)
        self.proc: Proc | None = None

    def start(self) -> None:
        targets = [f"{name}={port}" for name, port in self.targets.items()]
        self.proc = Proc(self.name, python_module("bench.floor", self.mode, *targets), self.workdir)
        try:
            self.ports = json.loads(self.proc.wait_for(r"^\{.*\}$")[0])
            echo_ready(self.ports["echo"], self.proc.alive)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def processes(self) -> dict[str, list[int]]:
        return {"forwarder": [self.proc.pid]} if self.proc and self.proc.alive() else {}

    def procs(self) -> dict[str, Proc]:
        return {"forwarder": self.proc} if self.proc else {}


class TrioStreamFloor(FloorPath):
    name, label, mode = "floor-trio", "Trio forwarder", "trio-stream"


class TrioWaitFloor(FloorPath):
    name, label, mode = "floor-trio-wait", "Trio wait_readable forwarder", "trio-wait"


class EpollFloor(FloorPath):
    name, label, mode = "floor-epoll", "epoll forwarder", "epoll"


def main(argv: list[str]) -> int:
    pairs = [arg.partition("=") for arg in argv[1:]]
    if not argv or argv[0] not in MODES or not pairs or not all(p.isdigit() for _, _, p in pairs):
        print(f"usage: python -m bench.floor {{{','.join(MODES)}}} NAME=PORT...", file=sys.stderr)
        return 2
    targets = {name: int(port) for name, _, port in pairs}
    if argv[0] == "epoll":
        run_epoll(targets)
    else:
        run_trio(targets, raw=argv[0] == "trio-wait")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
