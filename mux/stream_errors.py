# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What stream and session operations raise when the other end or the session goes away."""

from __future__ import annotations

import trio


class StreamReset(trio.BrokenResourceError):
    """The stream was reset (RST): by the peer, refused by it, or never acknowledged."""


class SessionClosed(trio.BrokenResourceError):
    """The session is over; ``clean`` tells an orderly end from a failure."""

    def __init__(self, message: str, *, clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


class RemoteGoAway(SessionClosed):
    """The peer said GoAway: it accepts no new streams (the open ones go on)."""
