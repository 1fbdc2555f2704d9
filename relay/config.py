# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's tunables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .credentials import DEFAULT_COST

if TYPE_CHECKING:
    import mux


@attrs.frozen(kw_only=True)
class RelayConfig:
    """Durations are in seconds.

    handshake_timeout: an agent connection must finish TLS and authentication within this.
    connect_timeout: how long `Relay.connect` waits for the agent's answer about a target.
    bcrypt_cost: cost of the dummy hash checked for unknown bridge IDs (match the stored ones).
    store_poll_interval: how often the store is checked for changes made by other processes.
    mux: yamux settings for agent sessions (None: the defaults).
    """

    handshake_timeout: float = 10.0
    connect_timeout: float = 15.0
    bcrypt_cost: int = DEFAULT_COST
    store_poll_interval: float = 0.5
    mux: mux.Config | None = None
