# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What stream and session operations raise when the other end or the session goes away.

Both are `trio.BrokenResourceError` subclasses, so code written for any trio stream handles
them. The session keeps one of each as a record of what happened and raises a fresh copy
every time (`fresh`): a raised exception accumulates a traceback, and one object raised by
many calls would carry all of theirs. The transport error that ended a session, if any, is
the ``__cause__`` of every copy.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import trio


class StreamReset(trio.BrokenResourceError):
    """The stream was reset (RST): by the peer, refused by it, or never acknowledged."""


class SessionClosed(trio.BrokenResourceError):
    """The session is over; ``clean`` tells an orderly end from a failure."""

    def __init__(self, message: str, *, clean: bool = False) -> None:
        super().__init__(message)
        #: Whether the session ended in order (closed by either end, or after GoAway).
        self.clean = clean


class RemoteGoAway(SessionClosed):
    """The peer said GoAway: it accepts no new streams (the open ones go on)."""


_E = TypeVar("_E", bound=BaseException)


def fresh(error: _E) -> _E:
    """A new exception like ``error`` (same type, message and attributes, same ``__cause__``)
    with no traceback: what to raise in place of a recorded error."""
    new = copy.copy(error)
    new.__cause__ = error.__cause__
    return new
