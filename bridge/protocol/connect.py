# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The per-stream connect request and reply (sans-IO).

The relay opens a yamux stream and sends a `ConnectRequest`; the agent answers with a
`ConnectReply`. After status OK the stream carries the target's bytes. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import attrs

from bridge.protocol.wire import MessageParser, Reader, prefixed

CONNECT_VERSION = 1
MAX_HOST = 255
MAX_MESSAGE = 1024
MAX_REQUEST = 1 + 1 + MAX_HOST + 2  # 259
MAX_REPLY = 1 + 2 + MAX_MESSAGE  # 1027

# Hostnames, IPv4 and IPv6 literals (without brackets, optionally with a %zone).
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")


class ConnectError(Exception):
    """The peer sent something that is not a valid connect request or reply."""


class ConnectStatus(enum.IntEnum):
    """The agent's answer to a connect request, one byte on the wire: OK, or why the target
    cannot be served."""

    OK = 0
    NOT_ALLOWED = 1
    DNS_FAILURE = 2
    CONNECTION_REFUSED = 3
    TIMEOUT = 4
    UNREACHABLE = 5
    BAD_REQUEST = 6
    INTERNAL_ERROR = 7


def _check_host(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_HOST or not _HOST.fullmatch(value):
        raise ValueError(
            f"host must be a hostname or IP address of 1..{MAX_HOST} characters, got {value!r}"
        )


def _check_port(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"port must be 1..65535, got {value!r}")


def _check_message(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if len(value.encode()) > MAX_MESSAGE:
        raise ValueError(f"message must be at most {MAX_MESSAGE} bytes of UTF-8")


@attrs.frozen
class ConnectRequest:
    """What the relay asks of the agent at the start of a stream: a connection to host:port.

    Raises ValueError on construction for a host that is not a hostname or IP literal of
    1..MAX_HOST characters, or a port outside 1..65535."""

    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)


@attrs.frozen
class ConnectReply:
    """The agent's answer to a `ConnectRequest`: a `ConnectStatus` and a message (the address
    dialed on OK, the reason otherwise). Raises ValueError on construction for a message over
    MAX_MESSAGE bytes of UTF-8, or a status that is not a `ConnectStatus`."""

    status: ConnectStatus = attrs.field(converter=ConnectStatus)
    message: str = attrs.field(default="", validator=_check_message)


def encode_target(host: str, port: int) -> bytes:
    """A target as a request carries it (this one's, and a peered open's): host_len u8, the
    host in ASCII, port u16. Raises ValueError for a host that is not ASCII or too long."""
    return prefixed(1, host.encode("ascii"), MAX_HOST, "host") + port.to_bytes(2, "big")


def read_target(reader: Reader, error: type[Exception]) -> tuple[str, int]:
    """The target `encode_target` wrote: a host of `_HOST` characters and a port 1..65535.
    Raises `error` for anything else, `NeedMore` when short."""
    host = reader.text(1, 1, MAX_HOST, "host", ascii=True)
    port = reader.uint(2)
    if not _HOST.fullmatch(host):
        raise error(f"invalid host {host!r}")
    if port == 0:
        raise error("invalid port 0")
    return host, port


def encode_connect_request(request: ConnectRequest) -> bytes:
    """The wire form of `request`. Raises ValueError for a host that is not ASCII or too long
    (a validated `ConnectRequest` has neither)."""
    return bytes([CONNECT_VERSION]) + encode_target(request.host, request.port)


def encode_connect_reply(reply: ConnectReply) -> bytes:
    """The wire form of `reply`. Raises ValueError for a message too long for the wire (a
    validated `ConnectReply` has none)."""
    return bytes([reply.status]) + prefixed(2, reply.message.encode(), MAX_MESSAGE, "message")


class ConnectRequestParser(MessageParser[ConnectRequest]):
    """Agent side: ``feed`` bytes until it returns the `ConnectRequest`."""

    max_size = MAX_REQUEST
    error = ConnectError

    def _parse(self, reader: Reader) -> ConnectRequest:
        version = reader.uint(1)
        if version != CONNECT_VERSION:
            raise ConnectError(f"unsupported connect request version {version}")
        return ConnectRequest(*read_target(reader, ConnectError))


class ConnectReplyParser(MessageParser[ConnectReply]):
    """Relay side: ``feed`` bytes until it returns the `ConnectReply`."""

    max_size = MAX_REPLY
    error = ConnectError

    def _parse(self, reader: Reader) -> ConnectReply:
        code = reader.uint(1)
        message = reader.text(2, 0, MAX_MESSAGE, "message")
        try:
            status = ConnectStatus(code)
        except ValueError:
            raise ConnectError(f"unknown connect status {code}") from None
        return ConnectReply(status, message)
