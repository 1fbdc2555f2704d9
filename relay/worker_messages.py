# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The messages between `bridge-relay serve --workers N`'s parent and its workers (sans-IO).

Each message is one packet of a Unix SOCK_SEQPACKET socket pair, at most `MAX_MESSAGE`
bytes: a type byte, a 4-byte big-endian number (a request's, or 0), then the type's body.
A connection handed from one worker to another travels as one descriptor (SCM_RIGHTS)
attached to an OFFER (worker -> parent) or a DELIVER (parent -> worker) packet; no other
packet carries one.

=========  ===================  ==========================================================
type       direction            body
=========  ===================  ==========================================================
READY      worker -> parent     none: every listener is served
HOLD       worker -> parent     the bridge's ID, a NUL, its name: it has a session of it
RELEASE    worker -> parent     the bridge's ID: its last session of it ended
RETIRING   worker -> parent     none: it drains, it holds nothing from now on
OFFER      worker -> parent     a handover (+ the client's descriptor): see `Handover`
ACCEPTED   worker -> parent     none: it serves the DELIVER of this number
REFUSED    worker -> parent     none: it closed the DELIVER of this number (it no longer
                                holds the bridge, or it drains)
METRICS    worker -> parent     a piece of its metrics text; the last piece has flag 1
DELIVER    parent -> worker     a handover (+ the descriptor) for a bridge it holds
TAKEN      parent -> worker     the OFFER of this number was delivered: close your copy
NOBODY     parent -> worker     no worker holds the bridge: serve the OFFER yourself
SCRAPE     parent -> worker     send your metrics text (as METRICS of this number)
HELD       parent -> worker     the bridge's ID, a NUL, its name: some worker holds it
UNHELD     parent -> worker     the bridge's ID: no worker holds it any more
DRAIN      parent -> worker     drain and exit, as on SIGTERM (ignored when draining already)
STOP       parent -> worker     stop now, as on a second SIGTERM
=========  ===================  ==========================================================

A handover body: a 2-byte length, that many bytes of a JSON object (``bridge``, ``kind``
``forward`` or ``socks``, the forward's ``index`` or the SOCKS request's ``host``, ``port``
and ``user``), then the bytes already read from the client (at most `MAX_PENDING`). A peer
link's connection (kind ``peer``) names the worker's node in ``bridge`` instead: it goes to
that worker, whose prelude it carries still unread (`relay.peering`).
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

import attrs

#: The largest packet either side sends or accepts.
MAX_MESSAGE = 32 * 1024
#: The largest handover header (JSON) and the most bytes already read that a handover carries.
MAX_HEADER = 2048
MAX_PENDING = 16 * 1024
#: The longest bridge ID or name a presence message may carry.
MAX_NAME = 256

#: Between the host-level node's name and a worker's index in a worker's node name.
_WORKER = "/worker-"

_PREFIX = struct.Struct(">BI")
_LENGTH = struct.Struct(">H")


def worker_node(node: str, index: int, serial: int) -> str:
    """The node name of worker `index` of the host-level node `node`, in its `serial`-th
    start: ``NODE/worker-I.S``."""
    return f"{node}{_WORKER}{index}.{serial}"


def host_of_worker(node: str) -> str:
    """The host-level node of the worker named `node` (as `worker_node` names it); "" for
    a name that is not a worker's."""
    return node.rpartition(_WORKER)[0]


class MessageError(ValueError):
    """A packet that is not a valid message: the peer is broken, the pair is closed."""


class Kind(enum.IntEnum):
    """The message types."""

    READY = 1
    HOLD = 2
    RELEASE = 3
    RETIRING = 4
    OFFER = 5
    ACCEPTED = 6
    REFUSED = 7
    METRICS = 8
    DELIVER = 16
    TAKEN = 17
    NOBODY = 18
    SCRAPE = 19
    DRAIN = 20
    STOP = 21
    HELD = 22
    UNHELD = 23


_PRESENCE = frozenset({Kind.HOLD, Kind.RELEASE, Kind.HELD, Kind.UNHELD})

#: The types whose packet carries one descriptor.
WITH_DESCRIPTOR = frozenset({Kind.OFFER, Kind.DELIVER})


@attrs.frozen
class Handover:
    """A client connection handed from the worker that accepted it to the one that holds its
    bridge: what it is for, and the bytes already read from it."""

    bridge: str  # the node's name, for "peer"
    kind: str  # "forward", "socks" or "peer"
    details: dict[str, Any] = attrs.field(factory=dict)
    pending: bytes = b""

    def encode(self) -> bytes:
        """The body of an OFFER or DELIVER. Raises MessageError beyond the bounds."""
        header = json.dumps(
            {"bridge": self.bridge, "kind": self.kind, **self.details}, separators=(",", ":")
        ).encode()
        if len(header) > MAX_HEADER or len(self.pending) > MAX_PENDING:
            raise MessageError("handover larger than the bounds")
        return _LENGTH.pack(len(header)) + header + self.pending

    @classmethod
    def decode(cls, body: bytes) -> Handover:
        """Raises MessageError for a body that is not a valid handover."""
        if len(body) < _LENGTH.size:
            raise MessageError("truncated handover")
        (length,) = _LENGTH.unpack_from(body)
        if length > MAX_HEADER or len(body) - _LENGTH.size - length > MAX_PENDING:
            raise MessageError("handover larger than the bounds")
        if len(body) < _LENGTH.size + length:
            raise MessageError("truncated handover")
        try:
            header = json.loads(body[_LENGTH.size : _LENGTH.size + length])
        except ValueError as exc:
            raise MessageError(f"handover header: {exc}") from None
        if not isinstance(header, dict):
            raise MessageError("handover header is not an object")
        bridge, kind = header.pop("bridge", None), header.pop("kind", None)
        if not isinstance(bridge, str) or kind not in ("forward", "socks", "peer"):
            raise MessageError("handover without a bridge or a known kind")
        return cls(bridge, kind, header, bytes(body[_LENGTH.size + length :]))


@attrs.frozen
class Message:
    """One decoded message: its type, its number and its body."""

    kind: Kind
    number: int = 0
    body: bytes = b""

    def encode(self) -> bytes:
        """The packet. Raises MessageError when it would exceed `MAX_MESSAGE`."""
        packet = _PREFIX.pack(self.kind, self.number) + self.body
        if len(packet) > MAX_MESSAGE:
            raise MessageError(f"message of {len(packet)} bytes, over {MAX_MESSAGE}")
        return packet

    # -- typed views ----------------------------------------------------------------------

    def held(self) -> tuple[str, str]:
        """A HOLD's or HELD's bridge ID and name."""
        bridge_id, _, name = self.body.decode("utf-8", "replace").partition("\0")
        return bridge_id, name

    def handover(self) -> Handover:
        """An OFFER's or DELIVER's handover; MessageError when invalid."""
        return Handover.decode(self.body)


def decode(packet: bytes) -> Message:
    """One packet -> a `Message`. Raises MessageError for an unknown type, a packet over
    `MAX_MESSAGE`, or a presence message with an oversized name."""
    if len(packet) > MAX_MESSAGE:
        raise MessageError(f"message of {len(packet)} bytes, over {MAX_MESSAGE}")
    if len(packet) < _PREFIX.size:
        raise MessageError("truncated message")
    code, number = _PREFIX.unpack_from(packet)
    try:
        kind = Kind(code)
    except ValueError:
        raise MessageError(f"unknown message type {code}") from None
    body = bytes(packet[_PREFIX.size :])
    if kind in _PRESENCE and len(body) > 2 * MAX_NAME + 1:
        raise MessageError("presence message over its bound")
    return Message(kind, number, body)


def hold(bridge_id: str, name: str, kind: Kind = Kind.HOLD) -> Message:
    """HOLD (this worker has a session of the bridge), or HELD (some worker has). Raises
    MessageError for oversized names."""
    body = f"{bridge_id}\0{name}".encode()
    if len(body) > 2 * MAX_NAME + 1:
        raise MessageError("bridge ID or name over its bound")
    return Message(kind, 0, body)


def release(bridge_id: str, kind: Kind = Kind.RELEASE) -> Message:
    """RELEASE (this worker's last session of the bridge ended), or UNHELD (no worker holds
    it any more)."""
    return Message(kind, 0, bridge_id.encode()[:MAX_NAME])


def metrics_pieces(number: int, text: bytes) -> list[Message]:
    """The METRICS messages carrying `text` for SCRAPE `number`: the body is a flag byte (1
    on the last piece) and a piece of the text."""
    size = MAX_MESSAGE - _PREFIX.size - 1
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [b""]
    return [
        Message(Kind.METRICS, number, bytes([i == len(pieces) - 1]) + piece)
        for i, piece in enumerate(pieces)
    ]
