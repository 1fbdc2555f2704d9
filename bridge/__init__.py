# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The bridge agent, and everything both ends of a bridge share.

Subpackages: ``bridge.protocol`` (the handshake, the connect request, addresses),
``bridge.transport`` (TLS, WebSocket client and server, HTTP CONNECT proxies, prefixed
streams), ``bridge.ops`` (logs, metrics, sd_notify) and ``bridge.agent`` (the agent, its
allow-list and its command line).

Embedding the agent in a Trio program::

    agent = bridge.Agent("tls://relay.example.com", bridge_id, secret, ["db:5432"],
                         bridge.client_ssl_context(fingerprint="sha256:..."))
    await nursery.start(agent.run)  # returns once connected and authenticated
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.lazy import lazy_exports

__version__ = "0.1.0"

# The agent (and so trio and mux) is imported on first use of a name below, not with the
# package: ``relay.pytest_plugin`` is imported at every pytest start and must stay light.
_EXPORTS = {
    "Agent": "bridge.agent.agent",
    "AgentConfig": "bridge.agent.agent",
    "AgentError": "bridge.agent.agent",
    "AuthenticationFailed": "bridge.agent.agent",
    "RelayNotTrusted": "bridge.agent.agent",
    "RelayRejected": "bridge.agent.agent",
    "RelayUnavailable": "bridge.agent.agent",
    "AllowList": "bridge.agent.allowlist",
    "client_ssl_context": "bridge.transport.tls",
}
__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AllowList",
    "AuthenticationFailed",
    "RelayNotTrusted",
    "RelayRejected",
    "RelayUnavailable",
    "client_ssl_context",
]

if TYPE_CHECKING:
    from bridge.agent.agent import (
        Agent,
        AgentConfig,
        AgentError,
        AuthenticationFailed,
        RelayNotTrusted,
        RelayRejected,
        RelayUnavailable,
    )
    from bridge.agent.allowlist import AllowList
    from bridge.transport.tls import client_ssl_context


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
