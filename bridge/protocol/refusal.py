# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""One way to turn a peer's request away: the answer to send, and the reason to log."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

S = TypeVar("S")


class Refused(Exception, Generic[S]):
    """A peer's request is turned away, and the code that raised this knows how to answer.

    ``status`` is the answer the protocol sends back (a `WelcomeStatus` to an agent, a
    `ConnectStatus` to the relay, a SOCKS reply to a client); ``message`` is the one-line
    reason, logged and, where the protocol carries text, sent along; ``fields`` are more
    structured fields for the log line. Raised and caught inside one end's request handling:
    it never reaches a caller of the public API.
    """

    def __init__(self, status: S, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields
