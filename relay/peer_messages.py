# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What relay nodes say over a peer link once it is up (sans-IO): presence on the control
stream, and the open request and reply at the start of every other stream.

Presence: JSON lines (`encode_presence`, `PresenceReader`), each the full list of the bridges
the sender holds a session of, with the tunnels open through them. Open: an `OpenRequest`
(bridge ID, target, caller for the audit trail), answered by an `OpenReply`; after OK the
stream carries the target's bytes. Every length is bounded. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Any

import attrs

from bridge.protocol.connect import MAX_HOST, ConnectStatus
from bridge.protocol.wire import MessageParser, Reader, encode_json, prefixed

OPEN_VERSION = 1
MAX_BRIDGE = 64
MAX_CALLER = 1024
MAX_MESSAGE = 1024
MAX_OPEN_REQUEST = 1 + 1 + MAX_BRIDGE + 2 + MAX_CALLER + 1 + MAX_HOST + 2
MAX_OPEN_REPLY = 1 + 1 + 2 + MAX_MESSAGE
#: The longest presence line, and the most bridges one may list.
MAX_PRESENCE_LINE = 4 * 1024 * 1024
MAX_PRESENCE_BRIDGES = 50_000
#: Bridges `presence_steps` checks between two steps.
PRESENCE_STEP = 2_000


class PeerMessageError(Exception):
    """The other node sent something that is not a valid peer message."""


@attrs.frozen
class HeldBridge:
    """A bridge a node holds a session of: its ID, name and tunnels open through it."""

    id: str
    name: str
    streams: int


@attrs.frozen
class OpenRequest:
    """A caller node asks the holder to open host:port through `bridge` (an ID)."""

    bridge: str
    host: str
    port: int
    caller: dict[str, Any] = attrs.field(factory=dict)


class OpenOutcome(enum.IntEnum):
    """How the holder answered: the tunnel is open, or why not."""

    OK = 0
    NOT_CONNECTED = 1  # this node holds no session of the bridge (any more)
    BUSY = 2  # the bridge is at a limit of the holder's
    SHUTTING_DOWN = 3
    REFUSED = 4  # the agent's answer: `status` says which
    FAILED = 5  # anything else (TunnelError without status)


@attrs.frozen
class OpenReply:
    outcome: OpenOutcome = attrs.field(converter=OpenOutcome)
    status: ConnectStatus = attrs.field(default=ConnectStatus.OK, converter=ConnectStatus)
    message: str = ""


def encode_open_request(request: OpenRequest) -> bytes:
    """The wire form of `request`. Raises ValueError for a field too long."""
    return (
        bytes([OPEN_VERSION])
        + prefixed(1, request.bridge.encode(), MAX_BRIDGE, "bridge")
        + encode_json(request.caller, MAX_CALLER, "caller")
        + prefixed(1, request.host.encode("ascii"), MAX_HOST, "host")
        + request.port.to_bytes(2, "big")
    )


def encode_open_reply(reply: OpenReply) -> bytes:
    """The wire form of `reply`; a message over MAX_MESSAGE bytes is cut short."""
    message = reply.message.encode()[:MAX_MESSAGE].decode(errors="ignore").encode()
    return bytes([reply.outcome, reply.status]) + prefixed(2, message, MAX_MESSAGE, "message")


class OpenRequestParser(MessageParser[OpenRequest]):
    """Holder side: ``feed`` bytes until it returns the `OpenRequest`."""

    max_size = MAX_OPEN_REQUEST
    error = PeerMessageError

    def _parse(self, reader: Reader) -> OpenRequest:
        version = reader.uint(1)
        if version != OPEN_VERSION:
            raise PeerMessageError(f"unsupported open request version {version}")
        bridge = reader.text(1, 1, MAX_BRIDGE, "bridge", ascii=True)
        caller = reader.json_object(2, MAX_CALLER, "caller")
        host = reader.text(1, 1, MAX_HOST, "host", ascii=True)
        port = reader.uint(2)
        if port == 0:
            raise PeerMessageError("invalid port 0")
        return OpenRequest(bridge, host, port, caller)


class OpenReplyParser(MessageParser[OpenReply]):
    """Caller side: ``feed`` bytes until it returns the `OpenReply`; ``leftover`` is the
    start of the target's bytes."""

    max_size = MAX_OPEN_REPLY
    error = PeerMessageError

    def _parse(self, reader: Reader) -> OpenReply:
        outcome, status = reader.uint(1), reader.uint(1)
        message = reader.text(2, 0, MAX_MESSAGE, "message")
        try:
            return OpenReply(OpenOutcome(outcome), ConnectStatus(status), message)
        except ValueError:
            raise PeerMessageError(f"unknown open outcome {outcome}/{status}") from None


@attrs.frozen
class Presence:
    """One presence message: the bridges the sender holds, and whether it drains (it opens
    no new tunnels: other nodes send it none, and its agents move away)."""

    bridges: list[HeldBridge]
    draining: bool = False


def encode_presence(bridges: list[HeldBridge], *, draining: bool = False) -> bytes:
    """One presence line listing `bridges` (and ``"draining":true`` when the sender drains;
    nodes that do not know the key ignore it). Raises ValueError beyond the bounds."""
    if len(bridges) > MAX_PRESENCE_BRIDGES:
        raise ValueError(f"at most {MAX_PRESENCE_BRIDGES} bridges per presence message")
    value: dict[str, Any] = {"bridges": [[b.id, b.name, b.streams] for b in bridges]}
    if draining:
        value["draining"] = True
    line = json.dumps(value, separators=(",", ":")).encode()
    if len(line) >= MAX_PRESENCE_LINE:
        raise ValueError("presence message too long")
    return line + b"\n"


def _held(entry: Any) -> HeldBridge:
    if (
        not isinstance(entry, list)
        or len(entry) != 3
        or not all(isinstance(text, str) and 1 <= len(text) <= MAX_BRIDGE for text in entry[:2])
        or not isinstance(entry[2], int)
        or isinstance(entry[2], bool)
        or not 0 <= entry[2] < 2**31
    ):
        raise PeerMessageError("invalid bridge in a presence message")
    return HeldBridge(entry[0], entry[1], entry[2])


def decode_presence(line: bytes) -> Presence:
    """One presence line (without its newline). Raises PeerMessageError."""
    *_, presence = presence_steps(line, MAX_PRESENCE_BRIDGES)
    assert presence is not None
    return presence


def presence_steps(line: bytes, step: int = PRESENCE_STEP) -> Iterator[Presence | None]:
    """`decode_presence` in steps: yields None once the JSON is parsed and after every
    `step` bridges checked (a caller on an event loop lets other work run in between), then
    the `Presence`. Raises PeerMessageError."""
    try:
        value = json.loads(line, parse_constant=_reject)
    except (ValueError, RecursionError):
        raise PeerMessageError("presence message is not valid JSON") from None
    bridges = value.get("bridges") if isinstance(value, dict) else None
    if not isinstance(bridges, list) or len(bridges) > MAX_PRESENCE_BRIDGES:
        raise PeerMessageError("presence message has no valid bridge list")
    draining = value.get("draining", False)
    if not isinstance(draining, bool):
        raise PeerMessageError("presence message has an invalid draining flag")
    held: list[HeldBridge] = []
    for start in range(0, len(bridges), step):
        yield None
        held += [_held(entry) for entry in bridges[start : start + step]]
    yield Presence(held, draining)


def _reject(name: str) -> float:
    raise ValueError(name)


class PresenceReader:
    """Splits the control stream's bytes into presence lines, holding at most
    `MAX_PRESENCE_LINE` bytes: ``feed`` returns the latest complete message (None if the
    bytes completed none). Only that one is decoded: the lines it supersedes are skipped
    unread (counted in ``superseded``). Raises PeerMessageError for a line too long, or a
    latest one that is invalid."""

    def __init__(self, max_line: int = MAX_PRESENCE_LINE) -> None:
        self._buffer = bytearray()
        self._max = max_line
        self.superseded = 0

    def feed(self, data: bytes) -> Presence | None:
        line = self.feed_line(data)
        return None if line is None else decode_presence(line)

    def feed_line(self, data: bytes) -> bytes | None:
        """`feed`, but the latest complete line is returned undecoded (for
        `presence_steps`)."""
        start = len(self._buffer)
        self._buffer += data
        latest = None
        if (end := self._buffer.rfind(b"\n", start)) >= 0:  # only the new bytes are searched
            lines = bytes(self._buffer[:end]).split(b"\n")
            del self._buffer[: end + 1]
            lines = [line for line in lines if line]
            self.superseded += max(len(lines) - 1, 0)
            latest = lines[-1] if lines else None
        if len(self._buffer) >= self._max:
            raise PeerMessageError(f"presence line longer than {self._max} bytes")
        return latest
