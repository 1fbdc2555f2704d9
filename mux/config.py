# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Session settings. Defaults speak with hashicorp/yamux's defaults; durations are seconds."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen, validators

from .frames import INITIAL_WINDOW, MAX_UINT32

_positive_int: list[Any] = [validators.instance_of(int), validators.gt(0)]
_positive_float: list[Any] = [validators.instance_of((int, float)), validators.gt(0)]


@frozen(kw_only=True)
class Config:
    """A session's settings (frozen; every field keyword-only, validated on creation).

    Raises `ValueError` or `TypeError` for a value out of range.
    """

    #: Streams the peer opened that the application has not accepted yet; beyond, the one
    #: that waited longest is refused (RST). Also how many of our streams may wait for the
    #: peer's ACK before opening waits.
    accept_backlog: int = field(default=256, validator=_positive_int)
    #: Streams the peer may keep open at once; beyond, a SYN gets RST.
    max_inbound_streams: int = field(default=16384, validator=_positive_int)
    #: Ping the peer every keepalive_interval; a ping unanswered within ping_timeout ends the
    #: session.
    enable_keepalive: bool = True
    keepalive_interval: float = field(default=30.0, validator=_positive_float)
    ping_timeout: float = field(default=10.0, validator=_positive_float)
    #: Control frames (answers to pings, RSTs, window updates...) queued for the peer, in
    #: bytes, beyond which the session stops reading from the peer until they are written.
    max_control_backlog: int = field(default=16 * 1024, validator=_positive_int)
    #: A peer that keeps the control backlog full (reading less than it makes us answer) for
    #: this long breaks the protocol: GoAway with the protocol-error code ends the session.
    control_backlog_timeout: float = field(default=10.0, validator=_positive_float)
    #: A transport write that makes no progress (some bytes where the transport has a partial
    #: write, `send_some`; else 64 KiB) for this long ends the session.
    write_timeout: float = field(default=10.0, validator=_positive_float)
    #: A stream we opened that the peer has not acknowledged by then is reset.
    stream_open_timeout: float = field(default=75.0, validator=_positive_float)
    #: A stream the application closed whose peer has not finished by then is reset.
    stream_close_timeout: float = field(default=300.0, validator=_positive_float)
    #: Receive windows start at 256 KiB (the protocol's) and grow up to this, driven by the RTT.
    max_stream_window: int = field(
        default=16 * 1024 * 1024,
        validator=[
            validators.instance_of(int),
            validators.ge(INITIAL_WINDOW),
            validators.le(MAX_UINT32),
        ],
    )
    #: How much all of a session's windows may grow beyond their initial 256 KiB together.
    session_receive_budget: int = field(
        default=256 * 1024 * 1024, validator=validators.instance_of(int)
    )
    #: Data frames we send carry at most this many bytes, so streams take turns. As large as
    #: the initial window: per-frame work is what limits a Python sender, and the write
    #: buffer, not the frame, bounds how long another stream's frame waits.
    max_frame_size: int = field(
        default=256 * 1024, validator=[*_positive_int, validators.le(MAX_UINT32)]
    )
    #: Bytes queued for the transport before senders wait.
    write_buffer_size: int = field(default=1024 * 1024, validator=_positive_int)
    #: How much one read from the transport asks for.
    receive_size: int = field(default=256 * 1024, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.write_buffer_size < self.max_frame_size:
            raise ValueError("write_buffer_size must be at least max_frame_size")
