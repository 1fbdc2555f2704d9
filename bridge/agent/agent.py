# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent: dials the relay, authenticates, and serves the streams the relay opens.

`Agent.run` keeps a session up for as long as it runs: a lost session (the relay went away,
the link died and keepalive noticed, the relay closed it) is followed by a new one, after an
exponential backoff with full jitter. A relay of several nodes is given as a list of URLs (a
name resolving to several addresses counts as several): each round tries them all in random
order, moving on at once when one fails, and the backoff applies between rounds (see
`bridge.agent.relay_endpoints`). With ``AgentConfig.connections`` above 1 the agent keeps
sessions to up to that many distinct relay nodes at once (the relay names its node in the
Welcome; an older relay that does not is told apart by its address), each replaced on its
own when lost while the others serve. Only the relay refusing this agent (bad credentials,
another protocol version) ends it. `Agent.drain` stops it gracefully: GoAway, then the open
streams get up to ``drain_timeout`` to finish.

Per stream: read the `ConnectRequest`, check the allow-list against the resolved addresses,
dial exactly a checked address, answer with a `ConnectReply`, then copy bytes both ways with
half-close carried through.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio
from trio.lowlevel import ParkingLot

import mux
from bridge import __version__
from bridge.agent.allowlist import AllowList
from bridge.agent.backoff import Backoff
from bridge.agent.relay_endpoints import (
    RelayEndpoint,
    advertised_endpoint,
    order_endpoints,
    resolve_endpoints,
)
from bridge.agent.relay_url import RelayURL, parse_relay_urls
from bridge.ops import logs
from bridge.ops.errors import os_reason
from bridge.ops.metrics import BridgeSeries, TunnelMetrics
from bridge.ops.systemd import Notifier
from bridge.protocol.addresses import format_host_port
from bridge.protocol.connect import (
    MAX_MESSAGE,
    MAX_REQUEST,
    ConnectError,
    ConnectReply,
    ConnectRequest,
    ConnectRequestParser,
    ConnectStatus,
    encode_connect_reply,
)
from bridge.protocol.control import (
    CLOSING,
    MAX_CONTROL_MESSAGE,
    MOVE,
    NODES,
    ControlError,
    ControlMessage,
    ControlParser,
    advertised_nodes,
)
from bridge.protocol.handshake import (
    CAPABILITIES,
    VERSIONS,
    HandshakeError,
    Hello,
    Welcome,
    WelcomeParser,
    WelcomeStatus,
    encode_hello,
)
from bridge.protocol.refusal import Refused
from bridge.transport.http_proxy import ProxyURL, bypasses_proxy, open_tcp_stream
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.splice import abort_socket, send_eagerly, splice
from bridge.transport.tls import FingerprintMismatch, open_tls_client
from bridge.transport.tls_stream import TLSStream
from bridge.transport.websocket import WebSocketConfig, WebSocketError, websocket_client
from bridge.validators import positive_number

log = logging.getLogger("bridge.agent")


#: The most sessions an agent keeps (``AgentConfig.connections``).
MAX_CONNECTIONS = 16
#: Relay addresses whose node the agent remembers (from the relays' Welcomes).
MAX_KNOWN_NODES = 1024


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Durations are seconds."""

    #: TCP connect to the relay (each of its addresses), and to each target address; resolving
    #: the relay's names, together.
    connect_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: TLS handshake, WebSocket upgrade (wss://) and Hello/Welcome, together.
    handshake_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: The relay must send a stream's connect request within this, and DNS must answer within it.
    request_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: How much one read from a target or a stream asks for.
    copy_size: int = attrs.field(default=256 * 1024, validator=attrs.validators.ge(64 * 1024))
    #: Ping the relay this often; no answer within keepalive_timeout ends the session (and a
    #: new one is dialed). Both override the values in mux_config.
    keepalive_interval: float = attrs.field(default=30.0, validator=positive_number)
    keepalive_timeout: float = attrs.field(default=10.0, validator=positive_number)
    #: Reconnect delays double up to this (with full jitter; the first is under 1 s).
    max_backoff: float = attrs.field(default=30.0, validator=positive_number)
    #: A session that lasted this long was healthy: the next reconnect starts the backoff over.
    healthy_session: float = attrs.field(default=10.0, validator=positive_number)
    #: Connection attempts in flight from one session to one target address; more wait for
    #: a turn (within connect_timeout), so a relay cannot make the agent flood a host.
    max_dials_per_target: int = attrs.field(
        default=16, validator=[attrs.validators.instance_of(int), attrs.validators.gt(0)]
    )
    #: After `Agent.drain`, how long open streams may take to finish before they are cut;
    #: likewise those of a session on a relay node that told the agent to move.
    drain_timeout: float = attrs.field(default=30.0, validator=positive_number)
    #: Sessions to keep, each to a distinct relay node (up to MAX_CONNECTIONS). A relay of
    #: one node (one address, or addresses that all name the same node) gets one.
    connections: int = attrs.field(
        default=2,
        validator=[
            attrs.validators.instance_of(int),
            attrs.validators.in_(range(1, MAX_CONNECTIONS + 1)),
        ],
    )
    #: Settings of the yamux session; None for mux's defaults.
    mux_config: mux.Config | None = None

    def session_config(self) -> mux.Config:
        """The yamux settings: mux_config (or the defaults) with this config's keepalive."""
        return attrs.evolve(
            self.mux_config or mux.Config(),
            keepalive_interval=self.keepalive_interval,
            ping_timeout=self.keepalive_timeout,
        )


class AgentError(Exception):
    """The agent could not (or can no longer) serve the relay."""


class RelayUnavailable(AgentError):
    """The relay could not be reached, failed TLS, broke the handshake, or asked to retry later."""


class RelayUntrusted(RelayUnavailable):
    """The relay's certificate failed verification (or the pin): retried, but logged as an
    error, since it usually takes someone to fix the trust settings or the relay."""


class RelayRejected(AgentError):
    """The relay refused this agent for a reason retrying will not fix."""

    def __init__(self, message: str, status: WelcomeStatus | None) -> None:
        super().__init__(message)
        self.status = status


class RelayNotTrusted(RelayRejected):
    """Before the first session, the relay's certificate failed verification (the pinned
    fingerprint or the CA): a configuration error, not retried. (After a first session the
    same failure is retried: a certificate rotation, an intercepting proxy or a clock fault
    must not stop a running agent for good.)"""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class AuthenticationFailed(RelayRejected):
    """The relay rejected the bridge ID or secret."""


class _SameNode(Exception):
    """The relay node that answered already has a session of this agent (or its host has
    one, and the round has addresses still to try that may reach another host)."""


@attrs.define(eq=False)
class _Link:
    """One of the sessions the agent keeps: the endpoint it dials or is on (kept while it
    waits to reconnect, so that another link does not take it meanwhile), the relay node it
    is on, the sessions it had, and why the relay last ended one."""

    index: int
    endpoint: RelayEndpoint | None = None
    node: str | None = None
    #: The host-level node of the relay node it is on: the node itself unless the Welcome
    #: named the host of which the node is one worker.
    host: str | None = None
    connected: bool = False
    sessions: int = 0
    relay_reason: str | None = None
    #: The relay node drains and told this session to move ("move" capability): a new link
    #: replaces this one, which is not kept up once its session ends.
    moved: bool = False
    told_to_move: trio.Event = attrs.field(factory=trio.Event, repr=False)
    #: The relay sent an invalid list of nodes in this session (logged once per session).
    bad_nodes: bool = False
    #: When its current session came up (`trio.current_time`).
    up_since: float = 0.0
    #: A replacement for a link told to move soon after its session came up waits this long
    #: before it dials (the moves' backoff), so that a relay cannot make it log in nonstop.
    first_delay: float = 0.0
    #: Set once this link's first session is up, or its first round found none.
    settled: trio.Event = attrs.field(factory=trio.Event, repr=False)
    #: A link that looks for a host no session is on, for one round (`Agent._rebalance`):
    #: it dials only addresses that may reach one, and ends if its round finds none; once
    #: its session is up it is a link like the others.
    probing: bool = False
    #: The link whose session is up on another host, that this one is let go for (set
    #: before `told_to_move`): this one is not replaced, its replacement is there.
    replacement: _Link | None = attrs.field(default=None, repr=False)
    #: The control stream of its current session, if the relay opened one.
    control: mux.Stream | None = attrs.field(default=None, repr=False)


def _fields(**fields: Any) -> dict[str, Any]:
    return {"fields": fields}


class _DialSlots:
    """Connection attempts in flight per target address, at most `limit` each: the excess
    waits its turn. Entries exist only while attempts to their address are in flight."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[tuple[str, int], tuple[list[int], ParkingLot]] = {}

    def try_take(self, address: tuple[str, int]) -> bool:
        """Take one of `address`'s slots if one is free now (and no one waits for one)."""
        entry = self._slots.get(address)
        if entry is None:
            self._slots[address] = ([1], ParkingLot())
            return True
        count, waiting = entry
        if count[0] >= self._limit or waiting:
            return False
        count[0] += 1
        return True

    async def take(self, address: tuple[str, int]) -> None:
        """Take one of `address`'s slots, waiting (cancellably) for one."""
        while True:
            # Looked up again after each wait: the entry this task waited on may have been
            # dropped meanwhile (its last slot given back before this task ran).
            count, waiting = self._slots.setdefault(address, ([0], ParkingLot()))
            if count[0] < self._limit:
                count[0] += 1
                return
            await waiting.park()

    def give_back(self, address: tuple[str, int]) -> None:
        """Give back a slot taken with `try_take` or `take`."""
        count, waiting = self._slots[address]
        count[0] -= 1
        if waiting:
            waiting.unpark()
        elif not count[0]:
            del self._slots[address]


class Agent:
    """Serves one bridge: ``await nursery.start(agent.run)`` returns once authenticated.

    ``relay_url`` is a `RelayURL`, several of them (the nodes of one relay), or their text:
    one URL or a comma-separated list (`bridge.agent.relay_url.parse_relay_urls`). ``allow``
    is an `AllowList` or allow-list entries; it must not be empty (use ``AllowList.any()`` to
    allow every target). ``ssl_context`` comes from
    `bridge.transport.tls.client_ssl_context`. ``notifier`` tells systemd about the agent's
    state. ``proxy`` is an HTTP proxy to reach the relay through, and ``no_proxy`` a
    ``NO_PROXY`` list of relay hosts reached without it
    (`bridge.transport.http_proxy.proxy_settings` reads both as curl does). ``metrics`` (a
    fresh `TunnelMetrics` if None) counts sessions, reconnects, streams, bytes and refusals,
    labelled with the bridge ID.

    Raises ValueError on construction for an invalid relay URL, proxy URL, allow-list entry,
    bridge ID or secret, and for an empty allow-list. The secret (and a proxy password) is
    redacted from every later log line.
    """

    def __init__(
        self,
        relay_url: str | RelayURL | Sequence[RelayURL],
        bridge_id: str,
        secret: str,
        allow: AllowList | Iterable[str],
        ssl_context: ssl.SSLContext,
        *,
        config: AgentConfig | None = None,
        proxy: str | ProxyURL | None = None,
        no_proxy: str = "",
        notifier: Notifier | None = None,
        metrics: TunnelMetrics | None = None,
    ) -> None:
        if isinstance(relay_url, str):
            relay_urls = parse_relay_urls(relay_url)
        elif isinstance(relay_url, RelayURL):
            relay_urls = (relay_url,)
        else:
            relay_urls = tuple(dict.fromkeys(relay_url))
        if not relay_urls:
            raise ValueError("no relay URL given")
        #: Where the agent dials: the nodes of the relay, in the order given.
        self.relay_urls: tuple[RelayURL, ...] = relay_urls
        self.proxy = ProxyURL.parse(proxy) if isinstance(proxy, str) else proxy
        self.no_proxy = no_proxy
        self.allow = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
        if not self.allow:
            raise ValueError("the allow-list is empty: give HOST:PORT entries, or AllowList.any()")
        info = {
            "agent": f"trio-bridge/{__version__}",
            "hostname": socket.gethostname(),
            "versions": list(VERSIONS),
            "capabilities": list(CAPABILITIES),
        }
        self._hello = Hello(bridge_id, secret, info)
        self.bridge_id = bridge_id
        self.ssl_context = ssl_context
        self.config = config or AgentConfig()
        self.notifier = notifier or Notifier(None)
        self.metrics = metrics or TunnelMetrics()
        #: Sessions authenticated so far.
        self.sessions = 0
        self._draining = False
        self._drain_requested = trio.Event()
        self._connecting: set[trio.CancelScope] = set()
        self._links = [_Link(index) for index in range(self.config.connections)]
        self._link_count = self.config.connections
        #: Moves told soon after a session came up back off like reconnects, but never by
        #: less than half the ceiling: a relay that says move over and over is followed at
        #: a bounded rate, whatever the random draws.
        self._move_backoff = Backoff(self.config.max_backoff, floor=0.5)
        self._links_freed = ParkingLot()  # a link was let go: an endpoint may be free
        self._links_changed = ParkingLot()  # a session came up or ended
        self._nodes_listed = ParkingLot()  # a relay's list of nodes changed
        self._nursery: trio.Nursery | None = None
        #: The relay node of each address that named its node (key: `RelayEndpoint.key`),
        #: in its Welcome or in a relay's list of nodes.
        self._nodes: dict[tuple[str, str, int, str, bool], str] = {}
        #: Likewise the host-level node of each address whose Welcome named one.
        self._hosts: dict[tuple[str, str, int, str, bool], str] = {}
        #: The endpoints of the nodes the relay advertised last ("nodes" capability): tried
        #: with the URLs' own; replaced by each new list, so a node no longer advertised is
        #: forgotten.
        self._learned: tuple[RelayEndpoint, ...] = ()
        self._first_session = trio.Event()
        self._fatal: AgentError | None = None
        self._open_streams = 0
        self._stream_ended = ParkingLot()
        self._drain_opened = self._cut = 0
        self._random = random.Random()
        logs.register_secret(secret)
        if self.proxy is not None and self.proxy.password:
            logs.register_secret(self.proxy.password)

    def __repr__(self) -> str:
        return f"<Agent {self.bridge_id} -> {','.join(map(str, self.relay_urls))}>"

    @property
    def relay_url(self) -> RelayURL:
        """The first of `relay_urls` (the only one, for a relay of one node)."""
        return self.relay_urls[0]

    def proxy_for(self, url: RelayURL) -> ProxyURL | None:
        """The HTTP proxy to reach ``url`` through: `proxy`, unless `no_proxy` exempts its
        host; None for a direct connection."""
        if self.proxy is None or bypasses_proxy(url.host, url.port, self.no_proxy):
            return None
        return self.proxy

    @property
    def open_streams(self) -> int:
        """Streams being served right now."""
        return self._open_streams

    @property
    def draining(self) -> bool:
        """`drain` was called."""
        return self._draining

    def drain(self) -> None:
        """Stop gracefully: no new streams (GoAway), open ones get ``drain_timeout`` to finish,
        then `run` returns. Without a session (connecting, or waiting to reconnect), at once.
        Safe to call more than once, from any task of the agent's Trio run; never blocks."""
        if self._draining:
            return
        self._draining = True
        self._drain_opened = opened = self._open_streams
        timeout = self.config.drain_timeout
        log.info("Draining", extra=_fields(open_connections=opened, timeout=timeout))
        self.notifier.stopping(f"Draining {opened} open connections")
        self._drain_requested.set()
        self._links_freed.unpark_all()
        self._links_changed.unpark_all()
        self._nodes_listed.unpark_all()
        self._first_session.set()  # `run` stops waiting for one
        for scope in self._connecting:
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Connect, authenticate and serve streams; after a lost session, reconnect, forever.

        Each round of attempts tries every address of every relay URL once, in random order
        (the address of the session just lost last), moving on at once when one fails; the
        backoff delay comes after a round without a session and after a session ends (see
        `bridge.agent.relay_endpoints`). Once the first session is up, the agent opens the
        others of ``AgentConfig.connections``, each to a node no other session is on, and
        keeps each one up the same way (a link with no such node to go to looks again every
        ``max_backoff`` seconds, quietly). Two sessions on one relay host (taken when no
        address reached another) are spread again once another host answers (`_rebalance`).

        Returns after `drain`: how many open streams the drain had to cut (0 after a clean
        drain). Raises `AuthenticationFailed` or `RelayRejected` when the relay refuses this
        agent: retrying would not help. Raises `RelayNotTrusted` when, before the first
        session, a whole round failed and a relay's certificate failed verification in it.
        A relay that is unavailable is retried, with a warning per attempt (an error when its
        certificate fails verification).

        Cancelled, it closes the sessions at once: open streams are cut (reset), nothing is
        drained; use `drain` to stop gracefully.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._keep_link, self._links[0], nursery.cancel_scope)
            await self._first_session.wait()
            if self.sessions:
                task_status.started()
                for link in self._links[1:]:
                    nursery.start_soon(self._keep_link, link, nursery.cancel_scope)
                if self.config.connections > 1:
                    nursery.start_soon(self._rebalance)
        if self._fatal is not None:
            raise self._fatal
        finished = max(self._drain_opened - self._cut, 0)
        log.info("Drained", extra=_fields(finished=finished, cut=self._cut))
        return self._cut

    async def _keep_link(self, link: _Link, scope: trio.CancelScope) -> None:
        """`_keep` one link up; a refusal that ends the agent cancels ``scope`` (every link)
        and is raised by `run`."""
        try:
            await self._keep(link)
        except AgentError as exc:
            if self._fatal is None:
                self._fatal = exc
            scope.cancel()

    async def _keep(self, link: _Link) -> None:
        """Keep ``link``'s session up until `drain`: rounds of attempts, backoff between them."""
        try:
            await self._keep_up(link)
        finally:
            link.endpoint = None
            # A moved link's replacement carries on; a probe that found no other host ends.
            if link.moved or link.probing:
                self._links.remove(link)
                self._links_freed.unpark_all()

    async def _keep_up(self, link: _Link) -> None:
        backoff = Backoff(self.config.max_backoff)
        last: RelayEndpoint | None = None  # the endpoint of the session lost last
        if link.first_delay:  # the moved link it replaces keeps serving meanwhile
            with trio.move_on_after(link.first_delay):
                await self._drain_requested.wait()
        while not self._draining and not link.moved:
            endpoints, failures = await self._round(link, last)
            if link.probing:  # only addresses that may reach a host no session is on
                endpoints = [e for e in endpoints if not self._host_in_use(link, e)]
                failures = []  # the links that dial those names tell of them
                if not endpoints:
                    link.settled.set()
                    return
            if not endpoints and not failures:
                # Every address is a node another session is on: look again later (a name
                # may resolve to more, a URL may come back, a session may let one go),
                # without a word.
                link.endpoint = None
                link.settled.set()
                with trio.move_on_after(self.config.max_backoff):
                    if not self._draining:
                        await self._links_freed.park()
                continue
            reason, level = "", logging.WARNING
            fields: dict[str, str] = {}
            untrusted: RelayUntrusted | None = None
            pending = False  # a failed attempt not logged yet
            shared = False  # an address of several workers answered with one in use
            for fields, reason in failures:
                if endpoints:
                    log.warning("Trying another relay", extra=_fields(**fields, reason=reason))
            # Addresses of hosts other sessions are on come last, and are taken only when
            # none after them may reach another host.
            endpoints.sort(key=lambda endpoint: self._host_in_use(link, endpoint))
            for number, endpoint in enumerate(endpoints):
                if self._in_use(link, endpoint):  # another link took it meanwhile
                    continue
                if link.probing and self._host_in_use(link, endpoint):
                    continue
                alone = not link.probing and all(
                    self._host_in_use(link, e) or self._in_use(link, e)
                    for e in endpoints[number + 1 :]
                )
                if pending:
                    log.log(level, "Trying another relay", extra=_fields(**fields, reason=reason))
                link.endpoint, pending = endpoint, True
                fields = endpoint.log_fields()
                level = logging.DEBUG if link.probing else logging.WARNING
                began, sessions = trio.current_time(), link.sessions
                try:
                    await self._run_session(
                        link, endpoint, trio.TASK_STATUS_IGNORED, share_host=alone
                    )
                    reason = "the relay closed the session"
                    if link.relay_reason:
                        reason += f": {link.relay_reason}"
                except _SameNode:
                    pending = False
                    # An address of a host of several workers: another worker may answer
                    # it next time, after the backoff (not at once, over and over).
                    known = self._nodes.get(endpoint.key)
                    shared = shared or self._hosts.get(endpoint.key, known) != known
                    continue
                except AuthenticationFailed as exc:
                    raise self._rejected(exc, link) from None
                except RelayUntrusted as exc:
                    untrusted = untrusted or exc
                    reason, level = str(exc), logging.ERROR
                except RelayUnavailable as exc:
                    reason = str(exc)
                if link.sessions > sessions:  # a session came about: this round is over
                    last = endpoint
                    if trio.current_time() - began >= self.config.healthy_session:
                        backoff.reset()
                    break
                if self._draining or link.moved:
                    break
            else:
                if link.probing:  # its one round found no other host
                    link.settled.set()
                    return
                if untrusted is not None and not self.sessions:
                    # Never worked, and a relay failed verification: the trust settings are
                    # wrong (the others could not be reached to tell otherwise).
                    raise RelayNotTrusted(str(untrusted))
                if not pending and not failures and not shared:
                    continue  # only nodes other sessions are on: the next round says so
                if not pending and not failures:
                    level, fields = logging.DEBUG, {}
                    reason = "the relay workers that answered have sessions of this agent"
            if self._draining or link.moved:
                break
            link.settled.set()  # a round without a session
            delay = backoff.next()
            log.log(
                level,
                f"Reconnecting in {delay:.1f} s",
                extra=_fields(**fields, reason=reason),
            )
            if self._connected_addresses():
                self.notifier.status(self._connected_status())
            else:
                self.notifier.status(f"Reconnecting in {delay:.1f} s: {reason}")
            with trio.move_on_after(delay):
                await self._drain_requested.wait()

    def _rejected(self, exc: AuthenticationFailed, link: _Link) -> AuthenticationFailed:
        """The relay's refusal of the credentials, with what is known of why."""
        if link.relay_reason:  # the relay said why it ended the last session
            message = f"{exc} (the relay said: {link.relay_reason})"
            return AuthenticationFailed(message, exc.status)
        if self.sessions:  # it worked before: the bridge was deleted or its secret rotated
            message = (
                f"{exc} (it was accepted before: was the bridge deleted or its secret rotated?)"
            )
            return AuthenticationFailed(message, exc.status)
        return exc

    def _in_use(self, link: _Link, endpoint: RelayEndpoint) -> bool:
        """Whether another link, not one told to move, dials ``endpoint``, is on it or waits
        to dial it again, or is on the node ``endpoint`` is known to be (an address of a host
        of several workers may reach any of them: it is not known to be one node)."""
        node = self._nodes.get(endpoint.key)
        if node is not None and self._hosts.get(endpoint.key, node) != node:
            node = None
        for other in self._links:
            # A link told to move is being let go: its address may reach another node (a
            # new worker behind the same listener, the node back after a restart).
            if other is link or other.endpoint is None or other.moved:
                continue
            if other.endpoint.key == endpoint.key:
                return True
            if node is not None and other.connected and other.node == node:
                return True
        return False

    def _host_in_use(self, link: _Link, endpoint: RelayEndpoint) -> bool:
        """Whether ``endpoint`` is known to reach a host another link, not one told to move,
        has a session on."""
        host = self._hosts.get(endpoint.key, self._nodes.get(endpoint.key))
        return host is not None and any(
            other.connected and not other.moved and other.host == host
            for other in self._links
            if other is not link
        )

    def _connected_addresses(self) -> list[str]:
        return [
            link.endpoint.address
            for link in self._links
            if link.connected and link.endpoint is not None
        ]

    def _connected_status(self) -> str:
        return f"Connected to {', '.join(self._connected_addresses())}"

    async def _round(
        self, link: _Link, last: RelayEndpoint | None
    ) -> tuple[list[RelayEndpoint], list[tuple[dict[str, str], str]]]:
        """The endpoints of one round for ``link``, in the order to try them (``last`` at the
        end; none that another link is on), and the URLs whose names did not resolve (log
        fields, reason). Empty when `drain` was called meanwhile."""
        resolved: list[list[RelayEndpoint]] = [[] for _ in self.relay_urls]
        failures: list[tuple[dict[str, str], str]] = []
        done: set[int] = set()

        async def resolve(index: int, url: RelayURL) -> None:
            try:
                resolved[index] = await resolve_endpoints(url, self.proxy_for(url))
            except (OSError, UnicodeError) as exc:
                reason = f"Cannot connect to the relay at {url.address}: {os_reason(exc)}"
                failures.append(({"address": url.address}, reason))
            done.add(index)

        with trio.CancelScope() as resolving:  # `drain` cancels it
            self._connecting.add(resolving)
            if self._draining:
                resolving.cancel()
            try:
                with trio.move_on_after(self.config.connect_timeout) as deadline:
                    async with trio.open_nursery() as nursery:
                        for index, url in enumerate(self.relay_urls):
                            nursery.start_soon(resolve, index, url)
            finally:
                self._connecting.discard(resolving)
            if deadline.cancelled_caught:
                for index, url in enumerate(self.relay_urls):
                    if index not in done:
                        reason = f"Timed out resolving the name of the relay at {url.address}"
                        failures.append(({"address": url.address}, reason))
        if self._draining:
            return [], []
        candidates = [endpoint for found in resolved for endpoint in found]
        endpoints = [e for e in [*candidates, *self._learned] if not self._in_use(link, e)]
        return order_endpoints(endpoints, self._random, last=last), failures

    async def run_session(
        self,
        endpoint: RelayEndpoint | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One session with ``endpoint`` (by default the first relay URL, dialed by name, through
        the proxy if it applies): connect, authenticate, serve; return when the relay ends it
        cleanly.

        Raises `RelayUnavailable` when the relay cannot be reached or the session is lost,
        `AuthenticationFailed` or `RelayRejected` when the relay refuses this agent. The
        relay's reason for ending a session, when it gives one, is logged. Cancelled, it
        closes the connection and cuts the open streams.
        """
        if endpoint is None:
            endpoint = RelayEndpoint(self.relay_url, None, self.proxy_for(self.relay_url))
        await self._run_session(_Link(-1, endpoint), endpoint, task_status)

    async def _run_session(
        self,
        link: _Link,
        endpoint: RelayEndpoint,
        task_status: trio.TaskStatus[None],
        *,
        share_host: bool = True,
    ) -> None:
        """`run_session` for ``link``. Raises `_SameNode`, having closed the connection, when
        the relay names a node another link is on, or (unless ``share_host``) a host."""
        async with self._connect(endpoint, quiet=link.probing) as connected:
            if connected is None:  # `drain` was called while connecting
                return
            transport, leftover, capabilities, (node, host) = connected
            host = host or node
            if node is not None:
                self._remember_node(endpoint, node, host)
                others = [o for o in self._links if o is not link and o.connected]
                same_node = any(o.node == node for o in others)
                if same_node or (not share_host and any(o.host == host for o in others)):
                    log.debug(
                        "Already connected to this relay node"
                        if same_node
                        else "Already connected to this relay host: trying another",
                        extra=_fields(**endpoint.log_fields(), node=node, host=host or ""),
                    )
                    raise _SameNode(node)
            link.node, link.host = node, host
            try:
                await self._serve_session(
                    link, endpoint, transport, leftover, capabilities, task_status=task_status
                )
            finally:
                link.connected = False
                self._links_changed.unpark_all()

    def _remember_node(self, endpoint: RelayEndpoint, node: str, host: str | None = None) -> None:
        """Note that ``endpoint`` reaches the relay node ``node``, and with ``host`` the
        host-level node it is a worker of (at most MAX_KNOWN_NODES addresses are remembered:
        beyond, the notes start over)."""
        if len(self._nodes) >= MAX_KNOWN_NODES and endpoint.key not in self._nodes:
            self._nodes.clear()
            self._hosts.clear()
        self._nodes[endpoint.key] = node
        if host is not None:  # a relay's list of nodes names none: the Welcome's stays
            self._hosts[endpoint.key] = host

    def _learn_nodes(self, message: ControlMessage, link: _Link, address: str) -> None:
        """The relay's list of its nodes (the "nodes" capability) replaces the one learned
        before: their addresses are tried like the URLs' from the next round on, verified as
        the URL of the session that told them. A list that does not parse is ignored, with
        warning per session (more are logged at debug level)."""
        try:
            nodes = advertised_nodes(message)
        except ControlError as exc:
            level = logging.DEBUG if link.bad_nodes else logging.WARNING
            link.bad_nodes = True
            log.log(
                level,
                "Ignoring the relay's list of nodes",
                extra=_fields(address=address, reason=str(exc)),
            )
            return
        if (told := link.endpoint) is None:
            return
        learned = []
        for node in nodes:
            if (endpoint := advertised_endpoint(told, node.host, node.port)) is not None:
                self._remember_node(endpoint, node.node, node.host_node)
                learned.append(endpoint)
        if tuple(learned) != self._learned:
            self._learned = tuple(learned)
            log.info(
                "The relay listed its nodes",
                extra=_fields(
                    address=address, nodes=" ".join(f"{n.node}={n.address}" for n in nodes)
                ),
            )
            self._links_freed.unpark_all()  # a link waiting for a node may have one now
            self._nodes_listed.unpark_all()

    async def _serve_session(
        self,
        link: _Link,
        endpoint: RelayEndpoint,
        transport: trio.abc.Stream,
        leftover: bytes,
        capabilities: frozenset[str],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        address = endpoint.address
        link.relay_reason, link.bad_nodes, link.control = None, False, None
        control = "control" in capabilities  # the relay's first stream is the control stream
        async with mux.open_session(
            PrefixedStream(transport, leftover) if leftover else transport,
            client=True,
            config=self.config.session_config(),
        ) as session:
            self.sessions += 1
            link.sessions += 1
            link.connected, link.probing = True, False
            link.up_since = trio.current_time()
            self._links_changed.unpark_all()
            up = len(self._connected_addresses())
            if up > 1:  # which of the sessions this is
                node = {} if link.node is None else {"node": link.node}
                extra = _fields(**endpoint.log_fields(), **node, sessions=up)
                log.info("Handling incoming proxy connections", extra=extra)
            else:
                log.info("Handling incoming proxy connections")
            status = self._connected_status() if up else f"Connected to {address}"
            if self.sessions == 1:
                self.notifier.ready(status)
            else:
                self.notifier.status(status)
            if link.sessions > 1:
                self.metrics.reconnects.inc()
            task_status.started()
            self._first_session.set()
            link.settled.set()
            relay = {"bridge": self.bridge_id, "relay": address, "node": link.node or ""}
            with (
                self.metrics.sessions.labels(bridge=self.bridge_id).track(),
                self.metrics.relay_sessions.labels(**relay).track(),
            ):
                async with trio.open_nursery() as nursery:
                    watcher = trio.CancelScope()
                    nursery.start_soon(self._drain_when_asked, session, watcher)
                    mover = trio.CancelScope()
                    nursery.start_soon(self._move_when_told, link, session, mover)
                    dials = _DialSlots(self.config.max_dials_per_target)
                    while True:
                        try:
                            # A tunnel's ACK rides on its connect reply (one frame, one
                            # write); the control stream, never answered, is acknowledged.
                            stream = await session.accept_stream(defer_ack=not control)
                        except mux.SessionClosed:
                            break
                        if control:
                            control, link.control = False, stream
                            nursery.start_soon(
                                self._read_control, stream, address, link, capabilities
                            )
                        else:
                            nursery.start_soon(self._serve_stream, session, stream, dials)
                    watcher.cancel()
                    mover.cancel()
        link.connected = False
        lost = session.close_reason
        if self._draining:
            return
        if link.moved:
            log.info(
                "Left the draining relay node"
                if link.replacement is None
                else "Left the second session to the relay host",
                extra=_fields(**endpoint.log_fields(), node=link.node or ""),
            )
            return
        reason = str(lost) if lost is not None else "the session ended"
        if link.relay_reason:
            reason = f"the relay said: {link.relay_reason}"
        log.warning(
            "Disconnected from the relay", extra=_fields(**endpoint.log_fields(), reason=reason)
        )
        if lost is not None and not lost.clean:
            raise RelayUnavailable(
                f"Lost the connection to the relay at {_where(endpoint)}: {lost}"
            )

    async def _read_control(
        self, stream: mux.Stream, address: str, link: _Link, capabilities: frozenset[str]
    ) -> None:
        """Read the relay's control messages until the stream or the session ends; what is
        read before the end (the relay's reason for ending it) is read in full. A message
        of a capability not agreed is ignored, as one of an unknown type."""
        parser = ControlParser()
        try:
            async with stream:
                while data := await stream.receive_some(MAX_CONTROL_MESSAGE):
                    for message in parser.feed(data):
                        if message.type == MOVE and self._nursery is not None:
                            link.relay_reason = logs.printable(message.reason) or "no reason"
                            link.told_to_move.set()
                        elif message.type == NODES and "nodes" in capabilities:
                            self._learn_nodes(message, link, address)
                        elif message.type == CLOSING:
                            link.relay_reason = reason = (
                                logs.printable(message.reason) or "no reason"
                            )
                            log.warning(
                                "The relay is ending the session",
                                extra=_fields(address=address, reason=reason),
                            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except ControlError as exc:
            log.warning(
                "Invalid control message from the relay",
                extra=_fields(address=address, reason=str(exc)),
            )
            stream.reset()

    async def _move_when_told(
        self, link: _Link, session: mux.Session, scope: trio.CancelScope
    ) -> None:
        """Once the relay says its node drains: a new link dials another node, and once its
        session is up (or it found none to go to) this one is let go: GoAway, its open
        streams finish (within the relay's drain timeout, and the agent's own), then it is
        closed. A move told within ``healthy_session`` of the session coming up is followed
        after a backoff (the old session serves meanwhile). A link told by `_rebalance`
        (its replacement is up already) is let go at once."""
        with scope:
            await link.told_to_move.wait()
            if self._draining or self._nursery is None:
                return
            link.moved = True
            if (replacement := link.replacement) is not None:
                log.info(
                    "Letting the second session to the relay host go",
                    extra=_fields(
                        node=link.node or "", host=link.host or "", moved_to=replacement.node or ""
                    ),
                )
            else:
                if trio.current_time() - link.up_since >= self.config.healthy_session:
                    self._move_backoff.reset()
                    delay = 0.0
                else:
                    delay = self._move_backoff.next()
                replacement = _Link(self._link_count, first_delay=delay)
                self._link_count += 1
                self._links.append(replacement)
                log.info(
                    "The relay node is draining: moving to another node",
                    extra=_fields(
                        address=link.endpoint.url.address if link.endpoint else "",
                        node=link.node or "",
                        reason=link.relay_reason or "",
                        **({"delay": f"{delay:.1f} s"} if delay else {}),
                    ),
                )
                self._nursery.start_soon(self._keep_link, replacement, self._nursery.cancel_scope)
                if not await self._settled(replacement):
                    return  # `_drain_when_asked` lets every session go
                log.info(
                    "Letting the draining relay node go",
                    extra=_fields(
                        node=link.node or "",
                        moved_to=replacement.node or ("" if replacement.connected else "none yet"),
                    ),
                )
            try:
                await session.go_away()
            except mux.SessionClosed:
                return
            if link.replacement is not None and link.control is not None:
                # The relay did not ask for this: its control stream would stay open.
                link.control.reset()
            await self._finish_streams(session)
            await session.aclose()

    async def _settled(self, link: _Link) -> bool:
        """Wait until ``link``'s first session is up or its first round found none: True;
        False if `drain` is called first."""
        async with trio.open_nursery() as race:

            async def settled() -> None:
                await link.settled.wait()
                race.cancel_scope.cancel()

            async def drained() -> None:
                await self._drain_requested.wait()
                race.cancel_scope.cancel()

            race.start_soon(settled)
            race.start_soon(drained)
        return not self._draining

    def _doubled(self) -> _Link | None:
        """Of two sessions on one relay host (none told to move), the one that came up
        last; None when every session is on a host of its own (or does not know its host)."""
        hosts: set[str] = set()
        up = [o for o in self._links if o.connected and not o.moved and o.host is not None]
        for link in sorted(up, key=lambda o: o.up_since):
            if link.host in hosts:
                return link
            hosts.add(link.host)  # type: ignore[arg-type]
        return None

    async def _rebalance(self) -> None:
        """While two sessions are on one relay host (taken when no address reached another),
        look for another host now and then: a probing link tries, for one round, the
        addresses that may reach a host no session is on, and once its session is up the
        later of the two is let go as a moved one is (make before break). The looks back
        off as reconnects do (up to ``max_backoff``), and start over only once no host has
        had two sessions for ``healthy_session``: a host that comes and goes is not chased
        back and forth. A relay's new list of nodes brings the next look forward, to no
        sooner than ``healthy_session`` after the last one. Returns after `drain`."""
        backoff = Backoff(self.config.max_backoff)
        looked = -math.inf  # when the last probing link was started
        while not self._draining:
            if self._doubled() is None:
                with trio.move_on_after(self.config.healthy_session) as quiet:
                    await self._links_changed.park()
                if quiet.cancelled_caught:
                    backoff.reset()
                continue
            deadline = trio.current_time() + backoff.next()
            while not self._draining and trio.current_time() < deadline:
                with trio.move_on_at(deadline):
                    await self._nodes_listed.park()
                    deadline = min(deadline, looked + self.config.healthy_session)
            if self._draining or (doubled := self._doubled()) is None or self._nursery is None:
                continue
            looked = trio.current_time()
            probe = _Link(self._link_count, probing=True)
            self._link_count += 1
            self._links.append(probe)
            self._nursery.start_soon(self._keep_link, probe, self._nursery.cancel_scope)
            if not await self._settled(probe) or not probe.connected:
                continue
            log.info(
                "Another relay host is reachable: moving a session there",
                extra=_fields(
                    node=doubled.node or "", host=doubled.host or "", to=probe.node or ""
                ),
            )
            doubled.replacement, doubled.moved = probe, True
            doubled.told_to_move.set()

    async def _drain_when_asked(self, session: mux.Session, scope: trio.CancelScope) -> None:
        """Once `drain` is called: GoAway, wait for the open streams (up to the drain
        timeout), close the session."""
        with scope:
            await self._drain_requested.wait()
            try:
                await session.go_away()
            except mux.SessionClosed:
                return
            timeout = self.config.drain_timeout
            with trio.move_on_after(timeout):
                while self._open_streams:
                    await self._stream_ended.park()
            if self._open_streams:
                log.warning(
                    f"Drain timed out after {timeout} s: cutting {self._open_streams} connections"
                )
            await session.aclose()

    async def _finish_streams(self, session: mux.Session) -> None:
        """Wait for `session`'s open streams to finish, up to ``drain_timeout`` (the
        rest are cut when it is closed: one log line)."""
        timeout = self.config.drain_timeout
        with trio.move_on_after(timeout):
            await session.wait_streams_closed()
        if session.streams_open:
            log.warning(
                f"The draining relay node kept {session.streams_open} connections open for "
                f"{timeout:g} s: cutting them"
            )

    # -- connecting to the relay ------------------------------------------------------------

    @asynccontextmanager
    async def _connect(
        self, endpoint: RelayEndpoint, *, quiet: bool = False
    ) -> AsyncIterator[
        tuple[trio.abc.Stream, bytes, frozenset[str], tuple[str | None, str | None]] | None
    ]:
        """TCP to ``endpoint`` (through its proxy, if any), TLS, the WebSocket upgrade for
        wss://, and the handshake. Yields the transport, the bytes after the Welcome, the
        negotiated capabilities and the relay's node and host names (None: not given), or None when
        `drain` was called meanwhile; closes the transport at the end. ``quiet``: the attempt
        is logged at debug level."""
        url, where = endpoint.url, _where(endpoint)
        via = {} if endpoint.proxy is None else {"proxy": endpoint.proxy.address}
        level = logging.DEBUG if quiet else logging.INFO
        log.log(level, "Connecting to the relay", extra=_fields(**endpoint.log_fields(), **via))
        connecting = trio.CancelScope()  # `drain` cancels it, and so does the deadline
        self._connecting.add(connecting)
        try:
            with connecting:
                if self._draining:
                    connecting.cancel()
                try:
                    with trio.fail_after(self.config.connect_timeout):
                        tcp = await open_tcp_stream(
                            endpoint.dial_host, endpoint.dial_port, proxy=endpoint.proxy
                        )
                except trio.TooSlowError:
                    raise RelayUnavailable(
                        f"Timed out connecting to the relay at {where}"
                    ) from None
                except OSError as exc:
                    message = f"Cannot connect to the relay at {where}: {os_reason(exc)}"
                    raise RelayUnavailable(message) from None
                timeout = self.config.handshake_timeout
                connecting.deadline = trio.current_time() + timeout
                tls = await self._secure(tcp, endpoint)
                async with tls, AsyncExitStack() as stack:
                    transport: trio.abc.Stream = tls
                    if url.scheme == "wss":
                        config = WebSocketConfig(handshake_timeout=timeout)
                        try:
                            transport = await stack.enter_async_context(
                                websocket_client(tls, url.host, url.port, url.path, config=config)
                            )
                        except WebSocketError as exc:
                            at = f"{url} ({endpoint.ip})" if "ip" in endpoint.log_fields() else url
                            message = f"Cannot connect to the relay at {at}: {exc}"
                            raise RelayUnavailable(message) from None
                    leftover, capabilities, names = await self._handshake(transport, where)
                    self._connecting.discard(connecting)
                    # `drain` (or the deadline) may have come as the handshake finished,
                    # after its last checkpoint: then the session is not begun.
                    if not connecting.cancel_called:
                        connecting.deadline = math.inf
                        yield transport, leftover, capabilities, names
                        return
        finally:
            self._connecting.discard(connecting)
        if not self._draining:
            raise RelayUnavailable(f"The relay at {where} did not finish the handshake in time")
        yield None

    async def _secure(self, tcp: trio.SocketStream, endpoint: RelayEndpoint) -> TLSStream:
        """TLS over ``tcp``: the handshake (the certificate checked for the URL's host), then
        the certificate pin."""
        address = _where(endpoint)
        try:
            return await open_tls_client(tcp, endpoint.url.host, self.ssl_context)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__ or exc
            reason = _tls_reason(cause)
            message = f"TLS handshake with the relay at {address} failed: {reason}"
            if isinstance(cause, ssl.SSLCertVerificationError):
                message += " (trust the relay with --ca FILE or --fingerprint sha256:HEX)"
                raise RelayUntrusted(message) from None
            raise RelayUnavailable(message) from None
        except FingerprintMismatch as exc:
            raise RelayUntrusted(f"Refusing the relay at {address}: {exc}") from None
        except OSError as exc:  # reset before TLS began
            message = f"Lost the connection to the relay at {address}: {os_reason(exc)}"
            raise RelayUnavailable(message) from None

    async def _handshake(
        self, transport: trio.abc.Stream, address: str
    ) -> tuple[bytes, frozenset[str], tuple[str | None, str | None]]:
        """Hello, Welcome with the relay at ``address``; returns the bytes received after the
        Welcome, the capabilities both sides support and the relay's node name and host-level
        node name (each None when it does not say)."""
        parser = WelcomeParser()
        try:
            await transport.send_all(encode_hello(self._hello))
            while (welcome := parser.feed(data := await transport.receive_some())) is None:
                if not data:
                    message = f"The relay at {address} closed the connection during the handshake"
                    raise RelayUnavailable(message)
        except trio.BrokenResourceError as exc:
            raise RelayUnavailable(
                f"Lost the connection to the relay at {address}: {exc}"
            ) from None
        except HandshakeError as exc:
            raise RelayUnavailable(
                f"Invalid handshake from the relay at {address}: {exc}"
            ) from None
        _check_welcome(welcome, address)
        capabilities = welcome.capabilities() & frozenset(CAPABILITIES)
        if "node" not in capabilities:
            return parser.leftover, capabilities, (None, None)
        return parser.leftover, capabilities, (welcome.node(), welcome.host())

    # -- serving one stream -----------------------------------------------------------------

    async def _serve_stream(
        self, session: mux.Session, stream: mux.Stream, dials: _DialSlots
    ) -> None:
        """Never raises: a stream's failure is that stream's alone."""
        self._open_streams += 1
        try:
            try:
                await self._serve_request(stream, dials)
            finally:
                stream.close()  # the task ends here: no checkpoint of its own
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream was reset or the session ended: nothing left to tell anyone
        except Exception:
            log.exception("Unexpected error on a stream", extra=_fields(stream=stream.stream_id))
            stream.reset()
        finally:
            self._open_streams -= 1
            if self._draining and session.closed:
                self._cut += 1  # the drain timed out, or the session was lost while draining
            if self._stream_ended:
                self._stream_ended.unpark_all()

    async def _serve_request(self, stream: mux.Stream, dials: _DialSlots) -> None:
        try:
            request, early = await self._read_request(stream)
        except ConnectError as exc:
            message = f"Bad connect request: {exc}"
            self.metrics.refused.inc(reason="bad_request")
            log.warning(message, extra=_fields(stream=stream.stream_id))
            await _reply(stream, ConnectStatus.BAD_REQUEST, message)
            return
        if request is None:
            return
        asked = time.monotonic()
        try:
            target, address = await self._open_target(request, dials)
        except Refused as refusal:
            self.metrics.refused.inc(reason=refusal.status.name.lower())
            log.warning(refusal.message, extra=_fields(**_stream_fields(request, stream)))
            await _reply(stream, refusal.status, refusal.message)
            return
        series = self.metrics.for_bridge(self.bridge_id)
        series.open_seconds.observe(time.monotonic() - asked)
        debug = log.isEnabledFor(logging.DEBUG)  # the fields cost more than the check
        try:
            await _reply(stream, ConnectStatus.OK, address)
            if debug:
                info = _stream_fields(request, stream)
                log.debug("Proxying connection", extra=_fields(**info, address=address))
            started = time.monotonic()
            sent, received = await self._splice(stream, target, early, series)
            if debug:
                log.debug(
                    "Connection closed",
                    extra=_fields(
                        **info,
                        bytes=sent + received,
                        bytes_sent=sent,
                        bytes_received=received,
                        duration=round(time.monotonic() - started, 3),
                    ),
                )
        finally:
            target.socket.close()  # no checkpoint of its own: the task ends soon

    async def _read_request(self, stream: mux.Stream) -> tuple[ConnectRequest | None, bytes]:
        """The stream's connect request and any bytes sent after it; None if it never came."""
        parser = ConnectRequestParser()
        try:
            # The relay sends the request with the stream's open: usually it is here already,
            # read without a deadline or a task switch.
            request = parser.feed(data := stream.receive_nowait(MAX_REQUEST))
        except trio.WouldBlock:
            pass
        else:
            if request is not None:
                return request, parser.leftover
            if not data:
                return None, b""  # closed before asking for anything
        with trio.move_on_after(self.config.request_timeout):
            while (request := parser.feed(data := await stream.receive_some(MAX_REQUEST))) is None:
                if not data:
                    return None, b""  # closed before asking for anything
            return request, parser.leftover
        log.warning("No connect request in time", extra=_fields(stream=stream.stream_id))
        stream.reset()
        return None, b""

    async def _open_target(
        self, request: ConnectRequest, dials: _DialSlots
    ) -> tuple[trio.SocketStream, str]:
        """Allow-list, DNS, dial (waiting for a turn among `dials`): returns the connected
        stream and the address dialed."""
        host, port = request.host, request.port
        candidates = _numeric(host, port)
        if candidates is None:
            if not self.allow.may_allow(host, port):
                if not self.allow.may_resolve(host):
                    raise Refused(
                        ConnectStatus.NOT_ALLOWED,
                        f"Host not in allowed hosts list: {format_host_port(host, port)} (a name "
                        "this agent does not resolve for IP or CIDR entries: --resolve-names)",
                    )
                raise _not_allowed(host, port)
            candidates = await self._resolve(host, port)
        # (An IP address needs no early check: may_allow would say what this says.)
        allowed = self.allow.allowed_addresses(host, port, [c[4][0] for c in candidates])
        refusal = None
        for family, type_, proto, _, sockaddr in candidates:
            if sockaddr[0] not in allowed:
                continue
            address = format_host_port(sockaddr[0], port)
            try:
                return await self._dial(family, type_, proto, sockaddr, dials), address
            except trio.TooSlowError:
                refusal = Refused(ConnectStatus.TIMEOUT, f"Connection timed out: {address}")
            except OSError as exc:
                refusal = _connect_refusal(exc, address)
        raise refusal or _not_allowed(host, port)

    async def _dial(
        self,
        family: int,
        type_: int,
        proto: int,
        sockaddr: tuple[Any, ...],
        dials: _DialSlots,
    ) -> trio.SocketStream:
        """A new socket connected to ``sockaddr``, within ``connect_timeout`` and a turn
        among `dials`. Raises OSError, or trio.TooSlowError past the deadline. A connection
        that completes within the ``connect`` call (a target on this host) takes no wait,
        no deadline scope and no task switch."""
        raw = socket.socket(family, type_, proto)
        sock = trio.socket.from_stdlib_socket(raw)  # non-blocking
        key = (sockaddr[0], sockaddr[1])
        held = False
        try:
            held = dials.try_take(key)
            if not (held and _connect(raw, sockaddr)):
                with trio.move_on_after(self.config.connect_timeout) as deadline:
                    if not held:
                        await dials.take(key)
                        held = True
                        connected = _connect(raw, sockaddr)
                    else:
                        connected = False
                    if not connected:
                        await trio.lowlevel.wait_writable(raw)
                        error = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise OSError(error, os.strerror(error))
                if deadline.cancelled_caught:
                    raise trio.TooSlowError
            return trio.SocketStream(sock)
        except BaseException:
            sock.close()
            raise
        finally:
            if held:
                dials.give_back(key)

    async def _resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """The host's addresses, resolved once: these (and only these) are checked and dialed."""
        try:
            # An IP address in a form `_numeric` does not take ("127.1") needs no lookup
            # either (no DNS, no thread, no deadline).
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=_NUMERIC
            )
        except (OSError, UnicodeError):  # a name: looked up below
            try:
                with trio.fail_after(self.config.request_timeout):
                    infos = await trio.socket.getaddrinfo(
                        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                    )
            except trio.TooSlowError:
                reason = "timed out"
            except (OSError, UnicodeError) as exc:
                reason = os_reason(exc)
            else:
                return _inet(infos)
            message = f"DNS lookup failed for {host}: {reason}"
            raise Refused(ConnectStatus.DNS_FAILURE, message) from None
        return _inet(infos)

    async def _splice(
        self, stream: mux.Stream, target: trio.SocketStream, early: bytes, series: BridgeSeries
    ) -> tuple[int, int]:
        """`early` to the target, then copy both ways until both sides sent EOF; an error on
        either side aborts both. Returns the byte counts (to the target, from the target)."""
        meters = (series.to_target.inc, series.from_target.inc)
        streams_open = series.streams_open
        series.streams.inc()
        streams_open.inc()
        sent = received = 0
        try:
            if early:
                await target.send_all(early)
                meters[0](len(early))
            sent, received, clean = await splice(
                stream, target, chunk=self.config.copy_size, meters=meters
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            clean = False
        finally:
            streams_open.dec()
        if not clean:
            stream.reset()
            abort_socket(target)
        return len(early) + sent, received


#: getaddrinfo flags for an address given as digits: never a lookup.
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


def _numeric(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """What getaddrinfo returns for ``host`` in the canonical form of an IPv4 or IPv6
    address (which `socket.inet_pton` takes, and no zone), without calling it; None for
    anything else (a name, another form of an address: `Agent._resolve`)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            if socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host)) != host:
                return None
        except (OSError, ValueError):
            return None
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


def _connect(raw: socket.socket, sockaddr: tuple[Any, ...]) -> bool:
    """Start connecting the non-blocking ``raw`` to ``sockaddr``: True if it is connected
    already (on loopback the handshake completes within the call), False if it is under
    way (wait until writable, then read SO_ERROR). Raises OSError if it failed at once."""
    error = raw.connect_ex(sockaddr)
    if error in (errno.EINPROGRESS, errno.EINTR):
        try:
            raw.getpeername()
        except OSError:
            return False
        return True
    if error:
        raise OSError(error, os.strerror(error))
    return True


def _not_allowed(host: str, port: int) -> Refused[ConnectStatus]:
    return Refused(
        ConnectStatus.NOT_ALLOWED, f"Host not in allowed hosts list: {format_host_port(host, port)}"
    )


def _stream_fields(request: ConnectRequest, stream: mux.Stream) -> dict[str, Any]:
    """The log fields of a stream's connection."""
    return {"target": format_host_port(request.host, request.port), "stream": stream.stream_id}


def _inet(infos: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The IPv4 and IPv6 results of a getaddrinfo, one per address, in order."""
    inet = [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    return list({info[4][:2]: info for info in inet}.values())


def _where(endpoint: RelayEndpoint) -> str:
    """The relay's ``host:port`` in messages, and the address dialed when that differs."""
    fields = endpoint.log_fields()
    return f"{fields['address']} ({fields['ip']})" if "ip" in fields else fields["address"]


def _check_welcome(welcome: Welcome, address: str) -> None:
    """Raise unless the relay accepted this agent in a version it offered."""
    status = welcome.status
    if status == WelcomeStatus.OK and welcome.version in VERSIONS:
        return
    reason = f": {logs.printable(welcome.message)}" if welcome.message else ""
    if status == WelcomeStatus.AUTH_FAILED:
        raise AuthenticationFailed(f"Relay rejected the bridge credentials{reason}", status)
    if status in (WelcomeStatus.BUSY, WelcomeStatus.INTERNAL_ERROR):
        raise RelayUnavailable(
            f"The relay at {address} cannot take the bridge now ({status.name}){reason}"
        )
    if welcome.version in VERSIONS:  # a version both speak: not a reason to give up
        if status == WelcomeStatus.UNSUPPORTED_VERSION:
            raise RelayUnavailable(
                f"The relay at {address} refused the protocol version, yet speaks version "
                f"{welcome.version}, as this agent does{reason}"
            )
    else:
        speaks = ", ".join(map(str, VERSIONS))
        raise RelayRejected(
            f"The relay speaks bridge protocol version {welcome.version}, "
            f"this agent versions {speaks}{reason}",
            WelcomeStatus.UNSUPPORTED_VERSION,
        )
    raise RelayRejected(f"The relay rejected the handshake ({status.name}){reason}", status)


async def _reply(stream: mux.Stream, status: ConnectStatus, message: str) -> None:
    """Send the connect reply, at once from this task when the stream takes it (the usual
    case: a reply is the stream's first data)."""
    raw = message.encode()[:MAX_MESSAGE].decode(errors="ignore")
    await send_eagerly(stream, encode_connect_reply(ConnectReply(status, raw)))


def _connect_refusal(exc: OSError, address: str) -> Refused[ConnectStatus]:
    if exc.errno == errno.ECONNREFUSED:
        return Refused(ConnectStatus.CONNECTION_REFUSED, f"Connection refused: {address}")
    if exc.errno == errno.ETIMEDOUT:
        return Refused(ConnectStatus.TIMEOUT, f"Connection timed out: {address}")
    return Refused(ConnectStatus.UNREACHABLE, f"{os_reason(exc)}: {address}")


def _tls_reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return reason or type(exc).__name__
