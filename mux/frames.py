# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The yamux frame header: 12 bytes, big-endian (hashicorp/yamux spec.md)."""

from __future__ import annotations

import enum
import struct

from attrs import frozen

from .errors import RemoteProtocolError

VERSION = 0
HEADER_SIZE = 12
HEADER = struct.Struct(">BBHII")
INITIAL_WINDOW = 256 * 1024
MAX_UINT32 = 2**32 - 1


class FrameType(enum.IntEnum):
    """The four yamux frame types."""

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    """Header flags: SYN opens a stream (or asks a ping), ACK answers it, FIN half-closes,
    RST aborts."""

    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    """The codes a GoAway frame carries."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@frozen
class Header:
    """One decoded frame header."""

    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def encode_header(type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes of a frame."""
    return HEADER.pack(VERSION, type, flags, stream_id, length)


def check_header(version: int, type: int) -> None:
    """Raise `RemoteProtocolError` for an unknown version or frame type."""
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported yamux version {version}")
    if type > FrameType.GO_AWAY:
        raise RemoteProtocolError(f"unknown yamux frame type {type}")


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """The header at ``offset``. Raises `ValueError` if fewer than 12 bytes are there,
    `RemoteProtocolError` if the header is not one of ours."""
    if len(buf) - offset < HEADER_SIZE:
        raise ValueError(f"a yamux header needs {HEADER_SIZE} bytes")
    header = Header(*HEADER.unpack_from(buf, offset))
    check_header(header.version, header.type)
    return header
