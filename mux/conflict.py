# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""One check for "another task is already sending/receiving" (trio's ConflictDetector)."""

from __future__ import annotations

from types import TracebackType

import trio

#: The messages a stream's two directions use.
SENDING = "another task is already sending on this stream"
RECEIVING = "another task is already receiving on this stream"


class ConflictDetector:
    """Detects two tasks using one direction of a stream at once.

    Use it as a context manager around a send or receive call::

        with self._send_conflict:
            ...

    Entering it while another task is inside raises `trio.BusyResourceError` with the
    message given; it never blocks and is not a checkpoint, so it does not change the
    cancellation behaviour of the call it guards. It is not reentrant.
    """

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    @property
    def held(self) -> bool:
        """Whether a task is inside the guarded section now."""
        return self._held

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held = False
