# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The versioned handshake that precedes yamux (sans-IO).

The agent sends a `Hello` carrying its credentials; the relay answers with a `Welcome`.
After a `Welcome` with status OK both sides speak yamux over the same bytes. See
docs/PROTOCOL.md for the wire layout and limits.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from bridge.protocol.wire import MessageParser, Reader, encode_json, is_token, prefixed

PROTOCOL_VERSION = 1
MAGIC = b"TBRG"

MAX_ID = 64
MAX_SECRET = 128
MAX_INFO = 1024
MAX_MESSAGE = 1024
MAX_HELLO = len(MAGIC) + 1 + 1 + MAX_ID + 1 + MAX_SECRET + 2 + MAX_INFO  # 1225
MAX_WELCOME = len(MAGIC) + 1 + 1 + 2 + MAX_MESSAGE  # 1032


class HandshakeError(Exception):
    """The peer sent something that is not a valid handshake message."""


class UnsupportedVersion(HandshakeError):
    """A well-formed message of a protocol version this side does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported bridge protocol version {version}")
        self.version = version


class WelcomeStatus(enum.IntEnum):
    """The relay's answer to a `Hello`, one byte on the wire: OK, or why the agent is refused."""

    OK = 0
    UNSUPPORTED_VERSION = 1
    AUTH_FAILED = 2
    MALFORMED = 3
    BUSY = 4
    INTERNAL_ERROR = 5


def _token(low: int, high: int):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if not isinstance(value, str) or not low <= len(value) <= high or not is_token(value):
            raise ValueError(
                f"{attribute.name} must be {low}..{high} printable ASCII characters without spaces"
            )

    return check


def _utf8_at_most(high: int):
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if len(value.encode()) > high:
            raise ValueError(f"{attribute.name} must be at most {high} bytes of UTF-8")

    return check


@attrs.frozen
class Hello:
    """The agent's first message: its bridge ID and secret (printable ASCII without spaces,
    within MAX_ID and MAX_SECRET characters) and a JSON object describing the agent. The secret
    is left out of ``repr``. Raises ValueError on construction for an ID or secret that breaks
    those rules."""

    bridge_id: str = attrs.field(validator=_token(1, MAX_ID))
    secret: str = attrs.field(repr=False, validator=_token(1, MAX_SECRET))
    info: dict[str, Any] = attrs.field(factory=dict, validator=attrs.validators.instance_of(dict))


@attrs.frozen
class Welcome:
    """The relay's answer to a `Hello`: a `WelcomeStatus`, a message for the agent's log, and
    the protocol version the relay speaks. Raises ValueError on construction for a message over
    MAX_MESSAGE bytes of UTF-8 or a version outside 0..255."""

    status: WelcomeStatus = attrs.field(converter=WelcomeStatus)
    message: str = attrs.field(default="", validator=_utf8_at_most(MAX_MESSAGE))
    version: int = attrs.field(default=PROTOCOL_VERSION, validator=attrs.validators.in_(range(256)))


def encode_hello(hello: Hello) -> bytes:
    """The wire form of `hello`. Raises ValueError for fields too long for the wire, or an
    ``info`` that is not JSON-serialisable (TypeError) or too large once encoded."""
    return b"".join(
        [
            MAGIC,
            bytes([PROTOCOL_VERSION]),
            prefixed(1, hello.bridge_id.encode("ascii"), MAX_ID, "bridge id"),
            prefixed(1, hello.secret.encode("ascii"), MAX_SECRET, "secret"),
            encode_json(hello.info, MAX_INFO, "info"),
        ]
    )


def encode_welcome(welcome: Welcome) -> bytes:
    """The wire form of `welcome`. Raises ValueError for a message too long for the wire."""
    return b"".join(
        [
            MAGIC,
            bytes([welcome.version, welcome.status]),
            prefixed(2, welcome.message.encode(), MAX_MESSAGE, "message"),
        ]
    )


def _magic_and_version(reader: Reader) -> int:
    if reader.take(len(MAGIC)) != MAGIC:
        raise HandshakeError("bad magic: not a bridge protocol peer")
    return reader.uint(1)


class HelloParser(MessageParser[Hello]):
    """Relay side: ``feed`` bytes until it returns the `Hello`.

    Raises `UnsupportedVersion` as soon as the version byte is known to differ.
    """

    max_size = MAX_HELLO
    error = HandshakeError

    def _parse(self, reader: Reader) -> Hello:
        version = _magic_and_version(reader)
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersion(version)
        bridge_id = reader.text(1, 1, MAX_ID, "bridge id", ascii=True)
        secret = reader.text(1, 1, MAX_SECRET, "secret", ascii=True)
        info = reader.json_object(2, MAX_INFO, "info")
        return Hello(bridge_id, secret, info)


class WelcomeParser(MessageParser[Welcome]):
    """Agent side: ``feed`` bytes until it returns the `Welcome`.

    A welcome of any version is returned (a relay that does not speak ours says so with
    UNSUPPORTED_VERSION and its own version).
    """

    max_size = MAX_WELCOME
    error = HandshakeError

    def _parse(self, reader: Reader) -> Welcome:
        version = _magic_and_version(reader)
        code = reader.uint(1)
        message = reader.text(2, 0, MAX_MESSAGE, "message")
        try:
            status = WelcomeStatus(code)
        except ValueError:
            raise HandshakeError(f"unknown welcome status {code}") from None
        return Welcome(status, message, version)
