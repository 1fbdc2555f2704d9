# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Errors of the sans-IO core (no trio import here)."""

from __future__ import annotations


class MuxError(Exception):
    """Base class of every error raised by mux."""


class ProtocolError(MuxError):
    """The yamux protocol was violated, by us or by the peer."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol does not allow (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol, or ended the session with an error GoAway.

    ``code`` is the GoAway code of that end: the one sent to the peer for its violation, or
    the one it sent.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
