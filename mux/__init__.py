# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""mux: a yamux-compatible stream multiplexer for Trio, built on a sans-IO core.

The wire format and behaviour follow hashicorp/yamux; receive windows additionally grow
with the measured RTT, frames are bounded for fairness, writes coalesce, and keepalive
pings detect a dead peer.

The sans-IO core (`Connection`, `Config`, the frames, events and errors) imports nothing
but attrs; the Trio adapter (`open_session`, `Session`, `Stream`, their errors and
`ConflictDetector`) is imported on first use of one of its names, so ``import mux`` and
``import mux.connection`` work without trio installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import Config
from .connection import Connection
from .errors import LocalProtocolError, MuxError, ProtocolError, RemoteProtocolError
from .frames import Flag, FrameType, GoAwayCode

_ADAPTER_EXPORTS = {
    "ConflictDetector": "mux.conflict",
    "RemoteGoAway": "mux.stream_errors",
    "Session": "mux.session",
    "SessionClosed": "mux.stream_errors",
    "SessionStatistics": "mux.session",
    "Stream": "mux.stream",
    "StreamReset": "mux.stream_errors",
    "open_session": "mux.session",
}

__all__ = [
    "Config",
    "ConflictDetector",
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

if TYPE_CHECKING:
    from .conflict import ConflictDetector
    from .session import Session, SessionStatistics, open_session
    from .stream import Stream
    from .stream_errors import RemoteGoAway, SessionClosed, StreamReset


def __getattr__(name: str) -> Any:
    if name not in _ADAPTER_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_ADAPTER_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_ADAPTER_EXPORTS])
