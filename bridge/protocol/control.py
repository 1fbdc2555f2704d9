# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Control messages: what the relay tells the agent outside any tunnel (sans-IO).

When the "control" capability was negotiated (see `bridge.protocol.handshake`), the first
stream the relay opens in a session is the control stream. It carries control messages, each
a u16 length and a UTF-8 JSON object with a string ``type``:

- ``{"type": "closing", "reason": "bridge secret rotated"}``: the relay is about to end the
  session (or, while draining, to stop sending new tunnels), and why.
- ``{"type": "move", "reason": "relay shutting down"}`` (capability "move"): the relay node
  drains; the agent opens a session to another node first, then lets this one go.

A receiver ignores types it does not know, so new types can be added under new capabilities.
"""

from __future__ import annotations

from typing import Any

import attrs

from bridge.protocol.wire import MessageParser, Reader, encode_json

MAX_CONTROL = 4096
MAX_CONTROL_MESSAGE = 2 + MAX_CONTROL
MAX_REASON = 1024

CLOSING = "closing"
MOVE = "move"


class ControlError(Exception):
    """The peer sent something that is not a valid control message."""


@attrs.frozen
class ControlMessage:
    """One control message: its type and its other fields."""

    type: str
    fields: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def closing(cls, reason: str) -> ControlMessage:
        """The relay ends the session because of ``reason`` (cut to MAX_REASON bytes)."""
        return cls(CLOSING, {"reason": reason.encode()[:MAX_REASON].decode(errors="ignore")})

    @classmethod
    def move(cls, reason: str) -> ControlMessage:
        """The relay node drains: move to another node, then let this session go."""
        return cls(MOVE, {"reason": reason.encode()[:MAX_REASON].decode(errors="ignore")})

    @property
    def reason(self) -> str:
        """The ``reason`` field, or "" when it is missing or not text."""
        reason = self.fields.get("reason")
        return reason if isinstance(reason, str) else ""


def encode_control(message: ControlMessage) -> bytes:
    """Raises ValueError when the encoded object exceeds MAX_CONTROL bytes."""
    return encode_json({**message.fields, "type": message.type}, MAX_CONTROL, "control message")


class _OneMessage(MessageParser[ControlMessage]):
    max_size = MAX_CONTROL_MESSAGE
    error = ControlError

    def _parse(self, reader: Reader) -> ControlMessage:
        body = reader.json_object(2, MAX_CONTROL, "control message")
        kind = body.pop("type", None)
        if not isinstance(kind, str):
            raise ControlError("control message without a type")
        return ControlMessage(kind, body)


class ControlParser:
    """Feeds the bytes of a control stream; returns the messages completed so far.

    Raises `ControlError` on a malformed message. Buffers at most one message.
    """

    def __init__(self) -> None:
        self._parser = _OneMessage()

    def feed(self, data: bytes | bytearray | memoryview) -> list[ControlMessage]:
        """The messages `data` completes, in order (an empty list while one is still partial).
        Raises `ControlError` for a malformed or oversized message."""
        messages = []
        while (message := self._parser.feed(data)) is not None:
            messages.append(message)
            data = self._parser.leftover
            self._parser = _OneMessage()
            if not data:
                break
        return messages
