# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The bridge agent, and the bridge protocol it shares with the relay.

Embedding the agent in a Trio program::

    agent = bridge.Agent("tls://relay.example.com", bridge_id, secret, ["db:5432"],
                         bridge.client_ssl_context(fingerprint="sha256:..."))
    await nursery.start(agent.run)  # returns once connected and authenticated
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The agent (and so trio and mux) is imported on first use of a name below, not with the
# package: ``bridge.pytest_plugin`` is imported at every pytest start and must stay light.
_EXPORTS = {
    "Agent": "agent",
    "AgentConfig": "agent",
    "AgentError": "agent",
    "AuthenticationFailed": "agent",
    "RelayRejected": "agent",
    "RelayUnavailable": "agent",
    "AllowList": "allowlist",
    "client_ssl_context": "tls",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .agent import (
        Agent,
        AgentConfig,
        AgentError,
        AuthenticationFailed,
        RelayRejected,
        RelayUnavailable,
    )
    from .allowlist import AllowList
    from .tls import client_ssl_context


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
