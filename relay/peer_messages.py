# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""What relay nodes say over a peer link once it is up (sans-IO): presence on the control
stream, and the open request and reply at the start of every other stream.

Presence: JSON lines (`presence_lines`, `PresenceReader`) that make up, in parts of bounded
size, the full list of the bridges the sender holds a session of, with the tunnels open
through them. Open: an `OpenRequest`
(bridge ID, target, caller for the audit trail), answered by an `OpenReply`; after OK the
stream carries the target's bytes. Every length is bounded. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from bridge.protocol.connect import MAX_HOST, ConnectStatus, encode_target, read_target
from bridge.protocol.wire import MessageParser, Reader, encode_json, prefixed

OPEN_VERSION = 1
MAX_BRIDGE = 64
MAX_CALLER = 1024
MAX_MESSAGE = 1024
MAX_OPEN_REQUEST = 1 + 1 + MAX_BRIDGE + 2 + MAX_CALLER + 1 + MAX_HOST + 2
MAX_OPEN_REPLY = 1 + 1 + 2 + MAX_MESSAGE
#: Presence: a list of held bridges goes in parts, lines of at most MAX_PRESENCE_PART
#: bridges and MAX_PRESENCE_LINE bytes (its newline included), so that a receiver decodes
#: a bounded piece at a time; a list has at most MAX_PRESENCE_BRIDGES bridges in all.
MAX_PRESENCE_LINE = 64 * 1024
MAX_PRESENCE_PART = 500
MAX_PRESENCE_BRIDGES = 50_000
#: How a part that another part of the same list follows ends (the key ``more`` last).
_MORE = b',"more":true}'


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
        + encode_target(request.host, request.port)
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
        host, port = read_target(reader, PeerMessageError)
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
    """One presence list: the bridges the sender holds (by ID, and the IDs by name), and
    whether it drains (it opens no new tunnels: other nodes send it none, and its agents
    move away)."""

    held: dict[str, HeldBridge]
    draining: bool = False
    names: dict[str, str] = attrs.field(eq=False, repr=False)

    @names.default
    def _names(self) -> dict[str, str]:
        return {bridge.name: bridge.id for bridge in self.held.values()}

    @classmethod
    def of(cls, bridges: Iterable[HeldBridge], *, draining: bool = False) -> Presence:
        """The presence listing `bridges`."""
        return cls({bridge.id: bridge for bridge in bridges}, draining)

    @property
    def bridges(self) -> list[HeldBridge]:
        return list(self.held.values())


def presence_lines(bridges: Sequence[HeldBridge], *, draining: bool = False) -> Iterator[bytes]:
    """The lines of one presence list (a generator: each part is encoded when asked for, so
    a sender on an event loop can let other work run between two). Every line but the last
    ends with `_MORE`; the last says ``"draining":true`` when the sender drains (nodes that
    do not know the key ignore it). Raises ValueError beyond MAX_PRESENCE_BRIDGES."""
    if len(bridges) > MAX_PRESENCE_BRIDGES:
        raise ValueError(f"at most {MAX_PRESENCE_BRIDGES} bridges per presence list")
    parts = [
        bridges[at : at + MAX_PRESENCE_PART] for at in range(0, len(bridges), MAX_PRESENCE_PART)
    ]
    parts = parts or [[]]
    while parts:
        part = parts.pop(0)
        value: dict[str, Any] = {"bridges": [[b.id, b.name, b.streams] for b in part]}
        if parts:
            value["more"] = True
        elif draining:
            value["draining"] = True
        line = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_PRESENCE_LINE:  # long (escaped) names: in halves
            half = len(part) // 2
            parts[:0] = [part[:half], part[half:]]
            continue
        yield line


def encode_presence(bridges: Sequence[HeldBridge], *, draining: bool = False) -> bytes:
    """All the lines of one presence list (`presence_lines`). Raises ValueError beyond the
    bounds."""
    return b"".join(presence_lines(bridges, draining=draining))


def _held(entry: Any) -> HeldBridge:
    if type(entry) is list and len(entry) == 3:
        bridge_id, name, streams = entry
        if (
            type(bridge_id) is str
            and type(name) is str
            and type(streams) is int
            and 1 <= len(bridge_id) <= MAX_BRIDGE
            and 1 <= len(name) <= MAX_BRIDGE
            and 0 <= streams < 2**31
        ):
            return HeldBridge(bridge_id, name, streams)
    raise PeerMessageError("invalid bridge in a presence message")


def _reject(name: str) -> float:
    raise ValueError(name)


class PresenceReader:
    """The receiving end of presence (sans-IO): `lines` splits the control stream's bytes
    into lines, holding at most MAX_PRESENCE_LINE bytes, and `decode` decodes one line, a
    part of a list, which it adds to the list being assembled; the list is returned whole
    with its last part, so a receiver never sees half a list. A batch of lines that ends
    more than one list is cut to the latest whole list and what follows it: the lists it
    supersedes are skipped unread (counted in ``superseded``). Every call does bounded work
    (one line, one batch). Raises PeerMessageError for a line too long or invalid, or a
    list beyond MAX_PRESENCE_BRIDGES."""

    def __init__(self, max_line: int = MAX_PRESENCE_LINE) -> None:
        self._buffer = bytearray()
        self._max = max_line
        self._held: dict[str, HeldBridge] = {}
        self._names: dict[str, str] = {}
        self.superseded = 0

    def lines(self, data: bytes) -> list[bytes]:
        """The lines `data` completes, those of lists a later list in them supersedes left
        out, for `decode` in order."""
        start = len(self._buffer)
        self._buffer += data
        lines: list[bytes] = []
        if (end := self._buffer.rfind(b"\n", start)) >= 0:  # only the new bytes are searched
            lines = [line for line in bytes(self._buffer[:end]).split(b"\n") if line]
            del self._buffer[: end + 1]
            ends = [at for at, line in enumerate(lines) if not line.endswith(_MORE)]
            if len(ends) > 1:
                self.superseded += len(ends) - 1
                self._held, self._names = {}, {}
                lines = lines[ends[-2] + 1 :]
        if len(self._buffer) >= self._max:
            raise PeerMessageError(f"presence line longer than {self._max} bytes")
        return lines

    def decode(self, line: bytes) -> Presence | None:
        """Decode one line (without its newline): the whole list once `line` is its last
        part, else None. Raises PeerMessageError."""
        if len(line) >= self._max:
            raise PeerMessageError(f"presence line longer than {self._max} bytes")
        try:
            value = json.loads(line, parse_constant=_reject)
        except (ValueError, RecursionError):
            raise PeerMessageError("presence message is not valid JSON") from None
        bridges = value.get("bridges") if isinstance(value, dict) else None
        if not isinstance(bridges, list) or len(bridges) > MAX_PRESENCE_PART:
            raise PeerMessageError("presence message has no valid bridge list")
        more, draining = value.get("more", False), value.get("draining", False)
        if not isinstance(draining, bool) or more is not line.endswith(_MORE):
            raise PeerMessageError("presence message has an invalid flag")
        for entry in bridges:
            held = _held(entry)
            self._held[held.id] = held
            self._names[held.name] = held.id
        if len(self._held) > MAX_PRESENCE_BRIDGES:
            raise PeerMessageError(f"presence list longer than {MAX_PRESENCE_BRIDGES} bridges")
        if more:
            return None
        presence = Presence(self._held, draining, self._names)
        self._held, self._names = {}, {}
        return presence

    def feed(self, data: bytes) -> Presence | None:
        """`lines` and `decode` at once: the latest whole list `data` completes, if any."""
        latest = None
        for line in self.lines(data):
            latest = self.decode(line) or latest
        return latest


def decode_presence(data: bytes) -> Presence:
    """One whole presence list, its lines as sent. Raises PeerMessageError, also for a list
    not complete."""
    presence = PresenceReader().feed(data)
    if presence is None:
        raise PeerMessageError("presence list not complete")
    return presence
