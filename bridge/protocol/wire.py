# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Bounded, incremental reading of the bridge protocol's fixed and length-prefixed fields.

Shared by ``handshake`` and ``connect``; both protocols are a single message that is parsed
from the start of a byte stream, after which the stream belongs to someone else.
"""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class NeedMore(Exception):
    """The buffer ends before the message does."""


class Reader:
    """Reads fields from the front of a buffer, raising `NeedMore` when it runs short."""

    def __init__(self, data: bytes | bytearray, error: type[Exception]) -> None:
        self._data = data
        self._error = error
        self.pos = 0

    def take(self, n: int) -> bytes:
        """The next `n` bytes. Raises `NeedMore` (and consumes nothing) when fewer are buffered."""
        end = self.pos + n
        if end > len(self._data):
            raise NeedMore
        chunk = bytes(self._data[self.pos : end])
        self.pos = end
        return chunk

    def uint(self, width: int) -> int:
        """The next `width` bytes as a big-endian unsigned integer; `NeedMore` when short."""
        return int.from_bytes(self.take(width), "big")

    def field(self, width: int, low: int, high: int, what: str) -> bytes:
        """A ``width``-byte length prefix, checked against ``low..high`` before the body is read."""
        n = self.uint(width)
        if not low <= n <= high:
            raise self._error(f"{what} length {n} is out of range {low}..{high}")
        return self.take(n)

    def text(self, width: int, low: int, high: int, what: str, *, ascii: bool = False) -> str:
        """A length-prefixed string (see `field`), decoded as UTF-8, or as printable ASCII without
        spaces when `ascii`. Raises the reader's error for a bad length or encoding, `NeedMore`
        when short."""
        raw = self.field(width, low, high, what)
        try:
            text = raw.decode("ascii" if ascii else "utf-8")
        except UnicodeDecodeError:
            raise self._error(f"{what} is not valid {'ASCII' if ascii else 'UTF-8'}") from None
        if ascii and not is_token(text):
            raise self._error(f"{what} contains characters outside printable ASCII")
        return text

    def json_object(self, width: int, high: int, what: str) -> dict[str, Any]:
        """A length-prefixed JSON object (empty: ``{}``). Raises the reader's error for invalid
        JSON, a non-object, NaN or Infinity; `NeedMore` when short."""
        raw = self.text(width, 0, high, what)
        if not raw:
            return {}
        try:
            value = _DECODER.decode(raw)
        except (ValueError, RecursionError):
            raise self._error(f"{what} is not valid JSON") from None
        if not isinstance(value, dict):
            raise self._error(f"{what} is not a JSON object")
        return value


def _reject_constant(name: str) -> None:
    raise ValueError(name)


# One encoder and one decoder for every message: json.dumps and json.loads build new ones
# for each call given options, which costs more than the small objects they handle here.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def is_token(text: str) -> bool:
    """Printable ASCII without spaces: what identifiers and secrets are made of."""
    # The same as every character being within "\x21".."\x7e", without a step per character.
    return text.isascii() and text.isprintable() and " " not in text


def prefixed(width: int, data: bytes, high: int, what: str) -> bytes:
    """`data` behind a `width`-byte big-endian length. Raises ValueError, naming `what`, when it
    is longer than `high` bytes."""
    if len(data) > high:
        raise ValueError(f"{what} is {len(data)} bytes, at most {high} allowed")
    return len(data).to_bytes(width, "big") + data


def encode_json(value: dict[str, Any], high: int, what: str) -> bytes:
    """`value` as compact JSON behind a two-byte length (empty for an empty dict). Raises
    ValueError when it encodes to more than `high` bytes, TypeError when it is not JSON."""
    data = _ENCODER.encode(value).encode() if value else b""
    return prefixed(2, data, high, what)


class MessageParser(Generic[T]):
    """Feeds bytes until one message is complete; ``leftover`` holds what came after it.

    Subclasses set ``max_size`` (the largest valid message), ``error`` and ``_parse``.
    At most ``max_size`` bytes are ever buffered.
    """

    max_size: int
    error: type[Exception]

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._message: T | None = None
        self.leftover = b""

    @property
    def message(self) -> T | None:
        """The parsed message once `feed` returned it, else None."""
        return self._message

    def feed(self, data: bytes | bytearray | memoryview) -> T | None:
        """Returns the message once complete, ``None`` while more bytes are needed."""
        if self._message is not None:
            raise RuntimeError("the message is complete; later bytes belong to the caller")
        room = self.max_size - len(self._buffer)
        data = memoryview(data)
        self._buffer += data[:room]
        excess = data[room:]
        try:
            message, used = self._parse_all()
        except NeedMore:
            if len(self._buffer) >= self.max_size:
                raise self.error(f"message longer than {self.max_size} bytes") from None
            return None
        self.leftover = bytes(self._buffer[used:]) + bytes(excess)
        self._buffer = bytearray()
        self._message = message
        return message

    def _parse_all(self) -> tuple[T, int]:
        reader = Reader(self._buffer, self.error)
        message = self._parse(reader)
        return message, reader.pos

    def _parse(self, reader: Reader) -> T:
        raise NotImplementedError
