# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The bridge agent, and the bridge protocol it shares with the relay.

Embedding the agent in a Trio program::

    agent = bridge.Agent("tls://relay.example.com", bridge_id, secret, ["db:5432"],
                         bridge.client_ssl_context(fingerprint="sha256:..."))
    await nursery.start(agent.run)  # returns once connected and authenticated
"""

__version__ = "0.1.0"

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

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AllowList",
    "AuthenticationFailed",
    "RelayRejected",
    "RelayUnavailable",
    "client_ssl_context",
]
