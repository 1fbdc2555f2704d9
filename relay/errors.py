# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Errors raised by the relay to its callers; each one's text is fit to show a user."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.protocol.connect import ConnectStatus


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class UnknownBridge(RelayError, LookupError):
    """No bridge has this name or ID."""

    def __init__(self, bridge: str) -> None:
        super().__init__(f"Unknown bridge: {bridge}")
        self.bridge = bridge


class DuplicateBridge(RelayError, ValueError):
    """A bridge with this name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"A bridge named {name!r} already exists")
        self.name = name


class InvalidBridgeName(RelayError, ValueError):
    """The name does not fit the rules for bridge names."""


class CertificateError(RelayError):
    """A certificate or key file cannot be read, created or used."""


class BridgeNotConnected(RelayError):
    """No agent of this bridge is connected right now; ``known`` False: no bridge has this
    name or ID at all (the message then says "Unknown bridge", as the command line does)."""

    def __init__(self, bridge: str, *, known: bool = True) -> None:
        super().__init__(
            f"Bridge not connected: {bridge}" if known else f"Unknown bridge: {bridge}"
        )
        self.bridge = bridge
        self.known = known


class TunnelError(RelayError):
    """A tunneled connection failed; the message says why (usually the agent's own words)."""

    def __init__(self, message: str, *, status: ConnectStatus | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class TargetNotAllowed(TunnelError):
    """The agent refused the target: it is not in the agent's allow-list."""


class TargetUnreachable(TunnelError):
    """The agent could not reach the target (DNS, refused, timeout, unreachable)."""


class BridgeBusy(TunnelError):
    """The bridge is at one of its limits (open streams, streams being opened); retry later."""


class RelayShuttingDown(RelayError):
    """The relay is draining before it stops: it opens no new tunnels."""


class StoreError(RelayError):
    """The bridge store cannot be reached or used (the message says which store and why,
    never a password)."""


class StoreUnavailable(StoreError):
    """The bridge store cannot be reached right now (refused, lost, timed out): the same call
    may succeed later."""


class StoreNotInitialised(StoreError):
    """The bridge store has no schema yet: `serve` or `bridges create` makes it."""


class NodeNameTaken(RelayError):
    """Another running relay has this node name (it heartbeated within the node timeout)."""
