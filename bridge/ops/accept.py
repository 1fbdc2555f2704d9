# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Accepting connections when the process is out of file descriptors (or memory): the
newest work is shed. The waiting connection is accepted on a spare descriptor kept for this
and closed at once, instead of waiting unanswered in the backlog (and instead of the
traceback `trio.serve_listeners` logs); connections already in go on. Used by every
listener of the relay and by the metrics endpoints."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bridge.ops.errors import os_reason

#: accept() errors that mean "out of file descriptors or memory for now", as trio has them.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

SHED_MESSAGE = (
    "Out of file descriptors: closing new connections at once until some are free (raise "
    "the limit: ulimit -n, LimitNOFILE=)"
)


class SpareDescriptor:
    """One descriptor kept open so that, when the process has none left, a waiting
    connection can still be accepted and closed at once instead of waiting unanswered."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.reopen()

    def __enter__(self) -> SpareDescriptor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def reopen(self) -> None:
        """Take the spare again (if a descriptor is free)."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # out of descriptors: tried again after the next shed connection

    def release(self) -> bool:
        """Close the spare (False if there was none); `reopen` takes it back."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


class ShedLog:
    """One log line when shedding starts, then at most one per `interval` seconds, with the
    connections shed since (for callers without a log budget of their own)."""

    def __init__(self, log: logging.Logger, what: str, interval: float = 10.0) -> None:
        self._log, self._what, self._interval = log, what, interval
        self._since: float | None = None
        self._count = 0

    def __call__(self, exc: OSError) -> None:
        now = time.monotonic()
        if self._since is not None and now - self._since < self._interval:
            self._count += 1
            return
        fields: dict[str, Any] = {"listener": self._what, "reason": os_reason(exc)}
        if self._count:
            fields["shed"] = self._count
        self._log.error(SHED_MESSAGE, extra={"fields": fields})
        self._since, self._count = now, 0


async def accept_or_shed(
    listener: trio.SocketListener, spare: SpareDescriptor, shed: Callable[[OSError], None]
) -> trio.SocketStream:
    """The next connection on `listener`. Out of descriptors (or memory), each waiting
    connection is accepted on `spare` and closed at once (`shed` is told, to log it) until
    one can be accepted. Raises other `OSError`s of accept. Cancellation: nothing to undo."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            shed(exc)
        if spare.release():
            try:
                stream = await listener.accept()  # the connection that is waiting: at once
            except OSError:
                pass
            else:
                stream.socket.close()
            finally:
                spare.reopen()
        else:
            await trio.sleep(0.1)


async def serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listeners: list[trio.SocketListener],
    *,
    shed: Callable[[OSError], None],
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like `trio.serve_listeners` (each connection to `handler` in a task of its own, until
    cancelled; `task_status.started` gets `listeners`), shedding new connections while out
    of descriptors (`accept_or_shed`)."""

    async def accept_loop(listener: trio.SocketListener, spare: SpareDescriptor) -> None:
        while True:
            stream = await accept_or_shed(listener, spare, shed)
            handlers.start_soon(handler, stream)

    async with trio.open_nursery() as handlers:
        with SpareDescriptor() as spare:
            async with trio.open_nursery() as loops:
                for listener in listeners:
                    loops.start_soon(accept_loop, listener, spare)
                task_status.started(listeners)
