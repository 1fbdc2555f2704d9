# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's tunables."""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING

import attrs

from bridge.validators import positive_count, positive_number
from relay.audit import AuditConfig
from relay.credentials import DEFAULT_COST, check_cost

if TYPE_CHECKING:
    import mux


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str | list | tuple) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as a tuple of networks, from a comma-separated string or a
    sequence of strings and networks; ValueError says which one is wrong."""
    items = value.split(",") if isinstance(value, str) else value
    networks = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
            try:
                item = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"invalid CIDR {item!r}: expected e.g. 10.0.0.0/8") from None
        networks.append(item)
    return tuple(networks)


@attrs.frozen(kw_only=True)
class PeerConfig:
    """Peer links between relay nodes (`Relay.serve_peers`). Durations are in seconds.

    keepalive_interval, ping_timeout: the link's yamux keepalive; a link whose ping is not
        answered within ping_timeout is down (its presence dropped at once).
    presence_interval: each side resends the bridges it holds this often.
    presence_debounce: after a change, how long to wait for more before sending presence.
    refresh_interval: how often the store's node list is read (whom to dial, whom to accept).
    redial_min, redial_max: the backoff between attempts to dial a node, doubled per failure.
    accept_backlog: streams a peer may have opened on the link that are not answered yet
        (the opening node waits to open more while that many are).
    link_wait: how long a worker of ``serve --workers N`` waits for its links to the other
        live nodes before it serves its forwards and says it serves.
    """

    keepalive_interval: float = attrs.field(default=2.0, validator=positive_number)
    ping_timeout: float = attrs.field(default=4.0, validator=positive_number)
    presence_interval: float = attrs.field(default=1.0, validator=positive_number)
    presence_debounce: float = attrs.field(default=0.05, validator=positive_number)
    refresh_interval: float = attrs.field(default=1.0, validator=positive_number)
    redial_min: float = attrs.field(default=0.2, validator=positive_number)
    redial_max: float = attrs.field(default=5.0, validator=positive_number)
    accept_backlog: int = attrs.field(default=1024, validator=positive_count)
    link_wait: float = attrs.field(default=5.0, validator=positive_number)


#: bcrypt checks at once: one per core, at least two (one of them kept for known bridges).
DEFAULT_BCRYPT_THREADS = max(2, os.cpu_count() or 1)


@attrs.frozen(kw_only=True)
class RelayConfig:
    """Durations are in seconds.

    handshake_timeout: an agent connection must finish TLS and authentication within this.
    connect_timeout: how long `Relay.connect` waits for the agent's answer about a target
        (and, before, at most as long for a slot under max_pending_opens).
    bcrypt_cost: cost of the dummy hash checked for unknown bridge IDs (match the stored ones).
    store_poll_interval: how often the store is checked for changes made by other processes.
    store_check_interval: the same, while the store notifies changes (PostgreSQL LISTEN):
        only a safety net then.
    store_threads: store calls run at once (worker threads; PostgreSQL connections).
    store_login_wait: how long a login waits for the store before it is decided from memory
        (bridges admitted before); also while the store is unreachable.
    store_retry_interval: while the store is unreachable, writes (last seen times) and the
        change notifications are retried this often.
    max_pending: agent connections (TLS and WebSocket) not yet authenticated, shared fairly
        between source addresses (IPv4 address, IPv6 /64): when all are taken, an address
        holding fewer takes one from the address holding the most; otherwise new connections
        are closed unread.
    proxy_protocol: load balancers (CIDRs) that send a PROXY protocol (v1 or v2) header first:
        their connections must carry one, and its source address is the one every limit and
        log line uses; anyone else sending one is dropped. Empty: off.
    auth_failures_per_minute: logins needing a bcrypt check that one source address may fail
        per minute, in a burst of as many, checks in flight included; beyond, it gets BUSY
        without a check (credentials verified before are still let in).
    auth_failures_per_bridge: the same, per bridge ID, for all the addresses that never
        logged in as that bridge together (so knowing an ID cannot lock its agents out).
    bcrypt_threads: bcrypt checks running at once.
    bcrypt_reserved: of those, how many only bridges that logged in from the same address
        before may use.
    bcrypt_wait: a login that cannot start its bcrypt check within this is answered BUSY.
    bcrypt_per_source: bcrypt checks one source address may have running or waiting at once;
        beyond, its logins are answered BUSY (identical credentials share one check).
    rate_limit_sources: how many source addresses the login rate limit remembers (LRU).
    log_interval: refusals that repeat (rate-limited logins, connections over max_pending,
        busy bridges) are logged once, then summed up once per this interval.
    max_sessions_per_bridge: agent sessions one bridge may have at once; a login beyond it is
        refused with BUSY (the agents already connected are kept: see docs/SECURITY.md).
    max_streams_per_bridge: streams across all the sessions of one bridge, the open ones and
        the opens waiting for their session.
    max_pending_opens: streams of one bridge waiting for the agent's answer about a target;
        more opens wait for a slot, first come first served, for up to connect_timeout
        (then BridgeBusy), and the bridge's forwards stop accepting meanwhile.
    drain_timeout: on shutdown, how long open streams may go on after GoAway.
    mux: yamux settings for agent sessions (None: the defaults), keepalive included.
    node: this relay's name in audit events and in the store's node list (None: host name
        and agent port, `host:4000`).
    host: for a worker of ``serve --workers``, the host-level node it is a worker of, told
        to agents in the Welcome so that they spread their sessions over hosts first (None:
        this node is a host of its own).
    node_timeout: a node that has not heartbeated for this long is gone; it heartbeats three
        times as often.
    agent_advertise: (host, port) agents are told to reach this node at, registered in the
        store's node list; port 0: the agent port `Relay.serve` listens on. Agents that ask
        (the "nodes" capability) are told every live linked node's. None: none told.
    audit: the audit trail's queue and progress interval.
    peer: peer links to the other nodes of a cluster (see `PeerConfig`).
    """

    handshake_timeout: float = attrs.field(default=10.0, validator=positive_number)
    connect_timeout: float = attrs.field(default=15.0, validator=positive_number)
    bcrypt_cost: int = attrs.field(default=DEFAULT_COST, validator=lambda _, __, v: check_cost(v))
    store_poll_interval: float = attrs.field(default=0.5, validator=positive_number)
    store_check_interval: float = attrs.field(default=5.0, validator=positive_number)
    store_threads: int = attrs.field(default=4, validator=positive_count)
    store_login_wait: float = attrs.field(default=2.0, validator=positive_number)
    store_retry_interval: float = attrs.field(default=1.0, validator=positive_number)
    max_pending: int = attrs.field(default=256, validator=positive_count)
    proxy_protocol: tuple[Network, ...] = attrs.field(default=(), converter=parse_networks)
    auth_failures_per_minute: int = attrs.field(default=10, validator=positive_count)
    auth_failures_per_bridge: int = attrs.field(default=30, validator=positive_count)
    bcrypt_threads: int = attrs.field(default=DEFAULT_BCRYPT_THREADS, validator=positive_count)
    bcrypt_reserved: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    bcrypt_wait: float = attrs.field(default=2.0, validator=positive_number)
    bcrypt_per_source: int = attrs.field(default=1, validator=positive_count)
    rate_limit_sources: int = attrs.field(default=10_000, validator=positive_count)
    log_interval: float = attrs.field(default=10.0, validator=positive_number)
    max_sessions_per_bridge: int = attrs.field(default=8, validator=positive_count)
    max_streams_per_bridge: int = attrs.field(default=16_384, validator=positive_count)
    max_pending_opens: int = attrs.field(default=256, validator=positive_count)
    drain_timeout: float = attrs.field(default=30.0, validator=positive_number)
    mux: mux.Config | None = None
    node: str | None = None
    host: str | None = None
    node_timeout: float = attrs.field(default=10.0, validator=positive_number)
    agent_advertise: tuple[str, int] | None = None
    audit: AuditConfig = attrs.field(factory=AuditConfig)
    peer: PeerConfig = attrs.field(factory=PeerConfig)
