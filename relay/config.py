# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's tunables."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from relay.audit import AuditConfig
from relay.credentials import DEFAULT_COST, check_cost

if TYPE_CHECKING:
    import mux

_seconds: list[Callable[[Any, Any, Any], Any]] = [
    attrs.validators.instance_of((int, float)),
    attrs.validators.gt(0),
]
_count = [attrs.validators.instance_of(int), attrs.validators.gt(0)]


@attrs.frozen(kw_only=True)
class RelayConfig:
    """Durations are in seconds.

    handshake_timeout: an agent connection must finish TLS and authentication within this.
    connect_timeout: how long `Relay.connect` waits for the agent's answer about a target.
    bcrypt_cost: cost of the dummy hash checked for unknown bridge IDs (match the stored ones).
    store_poll_interval: how often the store is checked for changes made by other processes.
    store_check_interval: the same, while the store notifies changes (PostgreSQL LISTEN):
        only a safety net then.
    store_threads: store calls run at once (worker threads; PostgreSQL connections).
    store_login_wait: how long a login waits for the store before it is decided from memory
        (bridges admitted before); also while the store is unreachable.
    store_retry_interval: while the store is unreachable, writes (last seen times) and the
        change notifications are retried this often.
    max_pending: agent connections not yet authenticated; beyond, new ones are closed unread.
    auth_failures_per_minute: failed logins one source address (IPv4 address, IPv6 /64) may
        make per minute, in a burst of as many; beyond, it gets BUSY without a bcrypt check.
    rate_limit_sources: how many source addresses the login rate limit remembers (LRU).
    log_interval: refusals that repeat (rate-limited logins, connections over max_pending,
        busy bridges) are logged once, then summed up once per this interval.
    max_sessions_per_bridge: agent sessions one bridge may have at once; a login beyond it is
        refused with BUSY (the agents already connected are kept: see docs/SECURITY.md).
    max_streams_per_bridge: streams across all the sessions of one bridge, the open ones and
        the opens waiting for their session.
    max_pending_opens: streams of one bridge waiting for the agent's answer about a target.
    drain_timeout: on shutdown, how long open streams may go on after GoAway.
    mux: yamux settings for agent sessions (None: the defaults), keepalive included.
    node: this relay's name in audit events and in the store's node list (None: host name
        and agent port, `host:4000`).
    node_timeout: a node that has not heartbeated for this long is gone; it heartbeats three
        times as often.
    audit: the audit trail's queue and progress interval.
    """

    handshake_timeout: float = attrs.field(default=10.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=15.0, validator=_seconds)
    bcrypt_cost: int = attrs.field(default=DEFAULT_COST, validator=lambda _, __, v: check_cost(v))
    store_poll_interval: float = attrs.field(default=0.5, validator=_seconds)
    store_check_interval: float = attrs.field(default=5.0, validator=_seconds)
    store_threads: int = attrs.field(default=4, validator=_count)
    store_login_wait: float = attrs.field(default=2.0, validator=_seconds)
    store_retry_interval: float = attrs.field(default=1.0, validator=_seconds)
    max_pending: int = attrs.field(default=256, validator=_count)
    auth_failures_per_minute: int = attrs.field(default=10, validator=_count)
    rate_limit_sources: int = attrs.field(default=10_000, validator=_count)
    log_interval: float = attrs.field(default=10.0, validator=_seconds)
    max_sessions_per_bridge: int = attrs.field(default=8, validator=_count)
    max_streams_per_bridge: int = attrs.field(default=16_384, validator=_count)
    max_pending_opens: int = attrs.field(default=256, validator=_count)
    drain_timeout: float = attrs.field(default=30.0, validator=_seconds)
    mux: mux.Config | None = None
    node: str | None = None
    node_timeout: float = attrs.field(default=10.0, validator=_seconds)
    audit: AuditConfig = attrs.field(factory=AuditConfig)
