# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""mux: a yamux-compatible stream multiplexer for Trio, built on a sans-IO core.

The wire format and behaviour follow hashicorp/yamux; receive windows additionally grow
with the measured RTT, frames are bounded for fairness, writes coalesce, and keepalive
pings detect a dead peer.
"""

from .config import Config
from .connection import Connection
from .errors import LocalProtocolError, MuxError, ProtocolError, RemoteProtocolError
from .frames import Flag, FrameType, GoAwayCode
from .session import Session, SessionStatistics, open_session
from .stream import Stream
from .stream_errors import RemoteGoAway, SessionClosed, StreamReset

__all__ = [
    "Config",
    "Connection",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "LocalProtocolError",
    "MuxError",
    "ProtocolError",
    "RemoteGoAway",
    "RemoteProtocolError",
    "Session",
    "SessionClosed",
    "SessionStatistics",
    "Stream",
    "StreamReset",
    "open_session",
]
