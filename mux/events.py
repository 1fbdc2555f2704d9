# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What `Connection.receive_data` reports: one event per thing the peer did."""

from __future__ import annotations

from attrs import frozen


class Event:
    """Base class of the events."""

    __slots__ = ()


@frozen
class StreamOpened(Event):
    """The peer opened a stream (SYN); `Connection.accept_stream` sends the ACK."""

    stream_id: int


@frozen
class StreamAccepted(Event):
    """The peer acknowledged (ACK) a stream we opened."""

    stream_id: int


@frozen
class DataReceived(Event):
    """Payload bytes for a stream: a view into the bytes given to `receive_data`.

    One frame may be reported in several pieces when its bytes arrive in several calls.
    """

    stream_id: int
    data: memoryview


@frozen
class StreamEnded(Event):
    """The peer half-closed the stream (FIN): it sends no more data.

    ``closed`` tells whether that closed the stream's last open half: the connection has
    then forgotten the stream (the answer as of this event, not of the end of the batch).
    """

    stream_id: int
    closed: bool = False


@frozen
class StreamReset(Event):
    """The peer reset the stream (RST), or refused one we opened."""

    stream_id: int


@frozen
class WindowUpdated(Event):
    """The peer allowed us to send ``delta`` more bytes on the stream."""

    stream_id: int
    delta: int


@frozen
class PingReceived(Event):
    """The peer pinged us; the answer is already queued."""

    opaque: int


@frozen
class PingAcknowledged(Event):
    """The peer answered our ping with this opaque value."""

    opaque: int


@frozen
class GoAwayReceived(Event):
    """The peer opens no more streams (code 0) or ended the session (any other code)."""

    code: int
