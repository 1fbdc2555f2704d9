# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A fault-injecting TCP proxy on 127.0.0.1, run by a thread with its own Trio loop.

Modes, switched at any time from any thread:

- ``pass_traffic()``: forward both ways, half-closes included (the start mode);
- ``delay(seconds)``: forward, each chunk held back ``seconds`` first;
- ``blackhole()``: forward nothing either way and read nothing, but keep every socket open,
  as a link that silently died: peers notice only by their own timeouts; new connections
  are accepted and held the same way. Passing again delivers what waited;
- ``cut()``: abort every connection (TCP RST both ways), and each new one as it arrives,
  as a relay that is gone; ``pass_traffic()`` ends it.

A connection whose upstream cannot be reached is aborted.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Callable
from functools import partial

import trio


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    CUT = "cut"


class FaultProxy:
    """``with FaultProxy(upstream_port) as proxy:``; agents dial ``proxy.url``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = Mode.PASS
        self.chunk_delay = 0.0
        #: Connections accepted so far.
        self.accepted = 0
        self._changed = trio.Event()
        self._connections: set[trio.CancelScope] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    # -- control, from any thread -------------------------------------------------------

    def pass_traffic(self) -> None:
        self._call(self._set, Mode.PASS, 0.0)

    def delay(self, seconds: float) -> None:
        self._call(self._set, Mode.PASS, seconds)

    def blackhole(self) -> None:
        self._call(self._set, Mode.BLACKHOLE, 0.0)

    def cut(self) -> None:
        self._call(self._set, Mode.CUT, 0.0)

    def connections(self) -> int:
        """Connections open right now."""
        return self._call(lambda: len(self._connections))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fault-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._error!r}")
        return self

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._call(self._stop.cancel)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, fn: Callable, *args):
        """Run ``fn(*args)`` in the proxy's loop and wait for it: usable from any thread,
        a Trio test's included (it takes no time: the proxy's loop answers at once)."""
        done, result = threading.Event(), []

        def job() -> None:
            result.append(fn(*args))
            done.set()

        self._token.run_sync_soon(job)
        if not done.wait(10):
            raise RuntimeError("the fault proxy does not answer")
        return result[0]

    def _run(self, ready: threading.Event) -> None:
        try:
            trio.run(self._main, ready)
        except BaseException as exc:  # reported by start(), or lost with the test's end
            self._error = exc
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
                )
                self.port = listeners[0].socket.getsockname()[1]
                ready.set()

    # -- in the proxy's loop ------------------------------------------------------------

    def _set(self, mode: Mode, chunk_delay: float) -> None:
        self.mode, self.chunk_delay = mode, chunk_delay
        self._changed.set()
        self._changed = trio.Event()
        if mode is Mode.CUT:
            for scope in self._connections:
                scope.cancel()

    async def _passing(self) -> None:
        """Return once traffic may flow (at once unless blackholed)."""
        while self.mode is Mode.BLACKHOLE:
            await self._changed.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        streams = [client]
        clean = False
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                if self.mode is not Mode.CUT:
                    await self._passing()
                    streams.append(upstream := await trio.open_tcp_stream(*self.upstream))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream)
                        nursery.start_soon(self._pump, upstream, client)
                    clean = True  # both ways ended with EOF
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                self._connections.discard(scope)
        for stream in streams:
            if not clean:  # cut, failed, or the proxy stopped: RST
                with contextlib.suppress(OSError):
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while True:
            await self._passing()
            data = await source.receive_some(65536)
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            await self._passing()
            if not data:
                await sink.send_eof()
                return
            await sink.send_all(data)
