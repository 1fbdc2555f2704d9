# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The versioned handshake that precedes yamux (sans-IO).

The agent sends a `Hello` carrying its credentials; the relay answers with a `Welcome`.
After a `Welcome` with status OK both sides speak yamux over the same bytes. See
docs/PROTOCOL.md for the wire layout and limits.

Negotiation: the Hello keeps the layout of version 1 (every relay reads it) and lists in its
``info`` the session versions and capabilities the agent supports. The relay answers in the
highest version both speak, and from version 2 on its Welcome carries the capabilities both
sides support. An agent that lists nothing gets a version 1 Welcome, exactly as before.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from bridge.protocol.wire import MessageParser, Reader, encode_json, is_token, prefixed

#: The layout of the Hello: unchanged since version 1, so that every relay reads it.
HELLO_VERSION = 1
#: Session versions this code speaks, oldest first: 1 (no Welcome info), 2 (Welcome info
#: with the negotiated capabilities).
VERSIONS = (1, 2)
PROTOCOL_VERSION = VERSIONS[-1]
#: Capabilities this code supports. "control": the relay opens a control stream first and
#: sends control messages on it (see `bridge.protocol.control`), e.g. why it closes a session.
#: "node": the relay's Welcome names the relay node the session is on (info ``node``), so
#: that an agent keeping sessions to several nodes tells two addresses of one node apart; a
#: worker of ``serve --workers`` also names its host-level node (info ``host``), so that the
#: agent spreads its sessions over hosts before workers of one host.
#: "move": while the relay node drains it tells the agent to move (a control message): the
#: agent opens a session to another node before it lets this one go.
#: "nodes": with "control", the relay tells the agent which nodes it has and the address
#: agents reach each at (a control message, again whenever that changes).
CAPABILITIES = ("control", "node", "move", "nodes")
MAGIC = b"TBRG"

MAX_ID = 64
MAX_SECRET = 128
MAX_INFO = 1024
MAX_MESSAGE = 1024
#: The longest node name a Welcome carries, in bytes of UTF-8.
MAX_NODE = 255
MAX_HELLO = len(MAGIC) + 1 + 1 + MAX_ID + 1 + MAX_SECRET + 2 + MAX_INFO  # 1225
MAX_WELCOME_V1 = len(MAGIC) + 1 + 1 + 2 + MAX_MESSAGE  # 1032
MAX_WELCOME = MAX_WELCOME_V1 + 2 + MAX_INFO  # 2058


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
    within MAX_ID and MAX_SECRET characters) and a JSON object describing the agent: its name
    and host for people, and ``versions`` and ``capabilities`` (lists) for the negotiation.
    The secret is left out of ``repr``. Raises ValueError on construction for an ID or secret
    that breaks those rules."""

    bridge_id: str = attrs.field(validator=_token(1, MAX_ID))
    secret: str = attrs.field(repr=False, validator=_token(1, MAX_SECRET))
    info: dict[str, Any] = attrs.field(factory=dict, validator=attrs.validators.instance_of(dict))

    def versions(self) -> set[int]:
        """The session versions the agent offers: {1} when it lists none (before 0.2)."""
        offered = self.info.get("versions")
        if not isinstance(offered, list):
            return {1}
        return {v for v in offered if isinstance(v, int) and not isinstance(v, bool)}

    def capabilities(self) -> set[str]:
        """The capabilities the agent offers (names from ``info``); empty when it lists none."""
        offered = self.info.get("capabilities")
        if not isinstance(offered, list):
            return set()
        return {c for c in offered if isinstance(c, str)}


@attrs.frozen
class Welcome:
    """The relay's answer to a `Hello`: a `WelcomeStatus`, a message for the agent's log, the
    session version, and from version 2 on an ``info`` object whose ``capabilities`` are the
    ones both sides support (a version 1 Welcome has none). Raises ValueError on construction
    for a message over MAX_MESSAGE bytes of UTF-8 or a version outside 0..255."""

    status: WelcomeStatus = attrs.field(converter=WelcomeStatus)
    message: str = attrs.field(default="", validator=_utf8_at_most(MAX_MESSAGE))
    version: int = attrs.field(default=1, validator=attrs.validators.in_(range(256)))
    info: dict[str, Any] = attrs.field(factory=dict, validator=attrs.validators.instance_of(dict))

    def capabilities(self) -> frozenset[str]:
        """The capabilities both sides use in this session (from ``info``); empty for version 1."""
        caps = self.info.get("capabilities")
        if not isinstance(caps, list):
            return frozenset()
        return frozenset(c for c in caps if isinstance(c, str))

    def node(self) -> str | None:
        """The relay node's name (``info["node"]``, with the "node" capability); None when
        absent, or not a string of 1..MAX_NODE bytes of UTF-8."""
        return node_name(self.info.get("node"))

    def host(self) -> str | None:
        """The host-level name of the relay node (``info["host"]``, with the "node"
        capability): the node of several worker processes, each a node of its own, that this
        one is a worker of. None when absent or not a string of 1..MAX_NODE bytes of UTF-8:
        the node is then a host of its own."""
        return node_name(self.info.get("host"))


def node_name(value: object) -> str | None:
    """`value` if it is a node name a Welcome (or a control message) may carry (1..MAX_NODE
    bytes of UTF-8), else None."""
    if not isinstance(value, str) or not 0 < len(value.encode()) <= MAX_NODE:
        return None
    return value


@attrs.frozen
class Agreement:
    """What the relay settled on for one agent: the session version, and the capabilities
    both sides support."""

    version: int
    capabilities: frozenset[str] = frozenset()


def negotiate(
    hello: Hello,
    versions: tuple[int, ...] = VERSIONS,
    capabilities: tuple[str, ...] = CAPABILITIES,
) -> Agreement | None:
    """The highest session version both speak, with the common capabilities (none below
    version 2); None when there is no common version."""
    common = hello.versions() & set(versions)
    if not common:
        return None
    version = max(common)
    if version < 2:
        return Agreement(version)
    return Agreement(version, frozenset(hello.capabilities() & set(capabilities)))


def _has_info(version: int, status: WelcomeStatus) -> bool:
    """Welcomes of version 2 carry info, except UNSUPPORTED_VERSION: that one keeps the
    version 1 layout, which every agent reads, with the relay's highest version."""
    return version >= 2 and status != WelcomeStatus.UNSUPPORTED_VERSION


def welcome_for(
    agreement: Agreement | None,
    status: WelcomeStatus,
    message: str = "",
    *,
    node: str | None = None,
    host: str | None = None,
) -> Welcome:
    """The Welcome to send in the agreed version (version 1 when none was agreed; for
    UNSUPPORTED_VERSION, the relay's highest version). With the "node" capability agreed, an
    OK Welcome names ``node`` and, for a worker of a node of several processes, its ``host``
    (each left out when longer than MAX_NODE bytes)."""
    if status == WelcomeStatus.UNSUPPORTED_VERSION:
        return Welcome(status, message, PROTOCOL_VERSION)
    if agreement is None or agreement.version < 2:
        return Welcome(status, message)
    info: dict[str, Any] = {"capabilities": sorted(agreement.capabilities)}
    if status == WelcomeStatus.OK and "node" in agreement.capabilities:
        for key, name in (("node", node), ("host", host)):
            if node_name(name) is not None:
                info[key] = name
    return Welcome(status, message, agreement.version, info)


def encode_hello(hello: Hello) -> bytes:
    """The wire form of `hello`. Raises ValueError for fields too long for the wire, or an
    ``info`` that is not JSON-serialisable (TypeError) or too large once encoded."""
    return b"".join(
        [
            MAGIC,
            bytes([HELLO_VERSION]),
            prefixed(1, hello.bridge_id.encode("ascii"), MAX_ID, "bridge id"),
            prefixed(1, hello.secret.encode("ascii"), MAX_SECRET, "secret"),
            encode_json(hello.info, MAX_INFO, "info"),
        ]
    )


def encode_welcome(welcome: Welcome) -> bytes:
    """Version 1: magic, version, status, message. Version 2 adds the info object (except
    for UNSUPPORTED_VERSION). Raises ValueError for a message or info too long for the
    wire."""
    parts = [
        MAGIC,
        bytes([welcome.version, welcome.status]),
        prefixed(2, welcome.message.encode(), MAX_MESSAGE, "message"),
    ]
    if _has_info(welcome.version, welcome.status):
        parts.append(encode_json(welcome.info, MAX_INFO, "info"))
    elif welcome.info:
        raise ValueError("this Welcome carries no info: version 1, or UNSUPPORTED_VERSION")
    return b"".join(parts)


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
        if version != HELLO_VERSION:
            raise UnsupportedVersion(version)
        bridge_id = reader.text(1, 1, MAX_ID, "bridge id", ascii=True)
        secret = reader.text(1, 1, MAX_SECRET, "secret", ascii=True)
        info = reader.json_object(2, MAX_INFO, "info")
        return Hello(bridge_id, secret, info)


class WelcomeParser(MessageParser[Welcome]):
    """Agent side: ``feed`` bytes until it returns the `Welcome`.

    A welcome of any version is returned (a relay that does not speak ours says so with
    UNSUPPORTED_VERSION and its own version). Version 2 carries an info object; for a
    version this code does not know, only the fields every version starts with are read.
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
        known = version in VERSIONS[1:] and _has_info(version, status)
        info = reader.json_object(2, MAX_INFO, "info") if known else {}
        return Welcome(status, message, version, info)
