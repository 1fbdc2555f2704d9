# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Traffic for the fault tests: an echo target, transfers checked by SHA-256, process memory."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

CHUNK = 64 * 1024


async def echo(stream: trio.SocketStream) -> None:
    """Echo until EOF, then half-close; a reset by the client just ends it."""
    async with stream:
        try:
            while data := await stream.receive_some(CHUNK):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


async def start_echo(nursery: trio.Nursery) -> str:
    """An `echo` server on 127.0.0.1, run by `nursery`; its "HOST:PORT"."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def transfer(
    port: int, size: int, *, pace: float = 0.0, progress: trio.Event | None = None
) -> bool:
    """`size` random bytes to an echo through 127.0.0.1:`port` and back, `pace` seconds
    between chunks; True if every byte came back intact. `progress` is set once data flows."""
    sent, received, count = hashlib.sha256(), hashlib.sha256(), 0
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for offset in range(0, size, CHUNK):
                    chunk = os.urandom(min(CHUNK, size - offset))
                    sent.update(chunk)
                    await stream.send_all(chunk)
                    await trio.sleep(pace)
                await stream.send_eof()

            nursery.start_soon(send)
            while data := await stream.receive_some(CHUNK):
                received.update(data)
                count += len(data)
                if progress is not None and count >= 4 * CHUNK:
                    progress.set()
            nursery.cancel_scope.cancel()  # the echo ended: sending more would only be refused
    return count == size and sent.digest() == received.digest()


async def outcome(port: int, size: int = 4096) -> str:
    """One `transfer` of `size` bytes through 127.0.0.1:`port`: "ok", "short", "hung" (not
    done within 20 s) or the error."""
    result = "hung"
    try:
        with trio.move_on_after(20):
            result = "ok" if await transfer(port, size) else "short"
    except* (OSError, trio.BrokenResourceError) as group:
        result = f"error: {group.exceptions[0]!r}"
    return result


async def load_around(
    port: int,
    action: Callable[[], object],
    until: Callable[[], Awaitable[object]],
    *,
    each: Callable[[int], Awaitable[str]] | None = None,
) -> list[str]:
    """A new connection through 127.0.0.1:`port` every 20 ms (`outcome` of each, or
    `each(n)` of the n-th, counted from 0): `action()` after 25 of them, on until `until()`
    has returned (at most 3000), then 25 more; the outcomes."""
    results: list[str] = []
    done = trio.Event()
    started = 0

    async def run() -> None:
        nonlocal started
        started += 1
        results.append(await (outcome(port) if each is None else each(started - 1)))

    async def wait() -> None:
        await until()
        done.set()

    async with trio.open_nursery() as clients:
        clients.start_soon(wait)
        for count in range(3000):
            clients.start_soon(run)
            await trio.sleep(0.02)
            if count == 25:
                action()
            if done.is_set() and count > 50:
                break
        for _ in range(25):  # and a while after
            clients.start_soon(run)
            await trio.sleep(0.02)
    return results


def rss_kib(pid: int) -> int:
    """The resident set of process `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)[1])


@asynccontextmanager
async def systemd_socket(tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A NOTIFY_SOCKET for a relay under test (give it in its environment): its path, and
    the messages the relay sent to it so far."""
    path = str(tmp_path / "notify")
    if len(path) > 100:  # beyond sun_path
        path = f"/tmp/trio-bridge-notify-{os.getpid()}"
    messages: list[str] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(path)

        async def collect() -> None:
            while True:
                messages.append((await sock.recv(4096)).decode())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            try:
                yield path, messages
            finally:
                nursery.cancel_scope.cancel()
    os.unlink(path)


async def transfer_while(port: int, size: int, stop: Callable[[], Awaitable[object]]) -> str:
    """The drain check: a paced `transfer` of `size` bytes through 127.0.0.1:`port`, and
    once it is under way, ``await stop()`` (a signal to the relay, and waiting for what
    follows). Returns how the transfer ended: "complete" if intact, "short" if the echo
    ended early, "error: ..." if the connection broke."""
    progress, result = trio.Event(), []

    async def run() -> None:
        try:
            done = await transfer(port, size, pace=0.02, progress=progress)
            result.append("complete" if done else "short")
        except* (OSError, trio.BrokenResourceError) as group:
            result.append(f"error: {group.exceptions[0]!r}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await progress.wait()
        await stop()
    return result[0]
