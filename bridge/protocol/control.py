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
- ``{"type": "nodes", "nodes": [{"node": "relay1", "address": "10.0.0.1:4000"}, ...]}``
  (capability "nodes"): the live nodes of the relay and the address agents reach each at
  (and, for a worker of a node of several processes, ``"host"``: that node); sent at the
  start of a session and again whenever the list changes (`advertised_nodes` reads it).

A receiver ignores types it does not know, so new types can be added under new capabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from bridge.protocol.addresses import format_host_port, parse_host_port
from bridge.protocol.handshake import MAX_NODE, node_name
from bridge.protocol.wire import MessageParser, Reader, encode_json

MAX_CONTROL = 4096
MAX_CONTROL_MESSAGE = 2 + MAX_CONTROL
MAX_REASON = 1024
#: The most entries a `nodes` message lists (a longer list is refused whole).
MAX_NODES = 32
#: The longest ``address`` of an entry: ``[`` IPv6 or a 255-byte name ``]:65535``.
MAX_ADDRESS = 2 + 255 + 6

CLOSING = "closing"
MOVE = "move"
NODES = "nodes"


class ControlError(Exception):
    """The peer sent something that is not a valid control message."""


@attrs.frozen
class AdvertisedNode:
    """A relay node (its name, as its Welcome gives it), the ``host``/``port`` agents reach
    it at (`--agent-advertise`), and for a worker of ``serve --workers``, ``host_node``: the
    host-level node it is a worker of (as its Welcome's ``host``; None for a node of one
    process)."""

    node: str
    host: str
    port: int
    host_node: str | None = None

    @property
    def address(self) -> str:
        """``host:port`` (an IPv6 host in brackets)."""
        return format_host_port(self.host, self.port)


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

    @classmethod
    def nodes(cls, nodes: Sequence[AdvertisedNode]) -> ControlMessage:
        """The relay's nodes and their agent addresses (and host-level nodes): the first
        MAX_NODES of ``nodes`` that a receiver accepts (a name of 1..MAX_NODE bytes, an
        address of at most MAX_ADDRESS characters; a host-level node out of the name's
        bounds is left out of its entry), and of those as many as fit in MAX_CONTROL bytes
        once encoded (the first ones are kept)."""
        entries = [
            {"node": n.node, "address": n.address}
            | ({"host": host} if (host := node_name(n.host_node)) else {})
            for n in nodes
            if node_name(n.node) and len(n.address) <= MAX_ADDRESS
        ][:MAX_NODES]
        while entries:
            message = cls(NODES, {"nodes": entries})
            try:
                encode_control(message)
            except ValueError:
                entries = entries[:-1]
                continue
            return message
        return cls(NODES, {"nodes": []})

    @property
    def reason(self) -> str:
        """The ``reason`` field, or "" when it is missing or not text."""
        reason = self.fields.get("reason")
        return reason if isinstance(reason, str) else ""


def advertised_nodes(message: ControlMessage) -> tuple[AdvertisedNode, ...]:
    """The entries of a `nodes` message, in order, each (node, address) once.

    Raises `ControlError`, saying what is wrong, unless ``nodes`` is a list of at most
    MAX_NODES objects, each with a ``node`` of 1..MAX_NODE bytes of UTF-8, an ``address``
    ``HOST:PORT`` (port 1..65535) of at most MAX_ADDRESS characters and, if it has one, a
    ``host`` of 1..MAX_NODE bytes of UTF-8: a list with one bad entry is refused whole.
    Other keys are ignored."""
    entries = message.fields.get("nodes")
    if not isinstance(entries, list):
        raise ControlError("nodes: not a list")
    if len(entries) > MAX_NODES:
        raise ControlError(f"nodes: {len(entries)} entries, more than {MAX_NODES}")
    found: dict[tuple[str, str, int], AdvertisedNode] = {}
    for index, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ControlError(f"nodes: entry {index} is not an object")
        node, address, host_node = entry.get("node"), entry.get("address"), entry.get("host")
        if not isinstance(node, str) or not node_name(node):
            raise ControlError(f"nodes: entry {index} has no node name of 1..{MAX_NODE} bytes")
        if host_node is not None and not node_name(host_node):
            raise ControlError(f"nodes: entry {index} has a host not of 1..{MAX_NODE} bytes")
        if not isinstance(address, str) or len(address) > MAX_ADDRESS:
            raise ControlError(
                f"nodes: entry {index} has no address of 1..{MAX_ADDRESS} characters"
            )
        try:
            host, port = parse_host_port(address)
        except ValueError as exc:
            raise ControlError(f"nodes: entry {index}: {exc}") from None
        found.setdefault((node, host, port), AdvertisedNode(node, host, port, host_node))
    return tuple(found.values())


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
