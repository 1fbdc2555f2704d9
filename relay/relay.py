# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay: admits agents, keeps their sessions, and opens tunnels through them.

Each agent connection runs in its own task: TLS, `Hello`, credential check and `Welcome`
within `RelayConfig.handshake_timeout`, then a yamux session (the relay is the server) kept in
the `Registry` until it ends. Whatever an agent connection does wrong ends that connection
only. At most `max_pending` connections may be on their way in, shared fairly between source
addresses (`relay.admission`); bcrypt checks are a budgeted resource: charged per source
address (and per bridge ID for addresses new to it) before they start, bounded in number, and
answered BUSY when no slot comes in time.

`Relay.connect` opens a stream through the bridge's least loaded session and sends the
`ConnectRequest`; the agent's refusal comes back as an exception carrying its own words.
Until the agent answers OK nothing has reached the target, so an open that fails because
its session went away is retried on the bridge's other sessions, unseen by the caller.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

import mux
from bridge.ops.accept import SHED_MESSAGE, SpareDescriptor, accept_or_shed
from bridge.ops.errors import connection_failure, failure_reason, os_reason
from bridge.ops.metrics import TunnelMetrics
from bridge.protocol.addresses import format_host_port, format_socket_address, parse_host_port
from bridge.protocol.connect import (
    ConnectError,
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    ConnectStatus,
    encode_connect_request,
)
from bridge.protocol.control import AdvertisedNode, ControlMessage, encode_control
from bridge.protocol.handshake import (
    HELLO_VERSION,
    MAX_HELLO,
    VERSIONS,
    Agreement,
    HandshakeError,
    Hello,
    HelloParser,
    UnsupportedVersion,
    WelcomeStatus,
    encode_welcome,
    negotiate,
    welcome_for,
)
from bridge.protocol.refusal import Refused
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.splice import send_eagerly
from bridge.transport.tls_stream import TLSStream
from bridge.transport.websocket import (
    DEFAULT_PATH,
    FRAME_OVERHEAD,
    WebSocketConfig,
    WebSocketError,
    WebSocketStream,
    accept_websocket,
)
from relay.admission import AdmissionGate, DropLog, Ticket
from relay.audit import BRIDGE_DELETED, SECRET_ROTATED, AuditHook, AuditTrail, Caller
from relay.certificates import PeerIdentity
from relay.config import RelayConfig
from relay.credentials import Verifier, cost_of, same_secret
from relay.errors import (
    BridgeBusy,
    BridgeNotConnected,
    NodeNameTaken,
    RelayShuttingDown,
    StoreError,
    TargetNotAllowed,
    TargetUnreachable,
    TunnelError,
)
from relay.handover import Handovers
from relay.limits import LoginLimiter, Repeats, source_of
from relay.open_slots import OpenSlots
from relay.os_limits import listen_backlog
from relay.proxy_protocol import (
    MAX_HEADER as MAX_PROXY_HEADER,
)
from relay.proxy_protocol import (
    ProxyHeaderError,
    parse_proxy_header,
    starts_like_proxy_header,
)
from relay.registry import AgentSession, Arrival, Registry
from relay.store import BridgeRecord, NodeRecord, Store
from relay.store.access import StoreAccess

if TYPE_CHECKING:
    from relay.peering import Peering

log = logging.getLogger("relay.relay")

AUTH_FAILED_MESSAGE = "invalid bridge credentials"
STORE_UNAVAILABLE_MESSAGE = "the relay cannot check credentials right now; retry later"
# Bridges admitted before, kept to admit their agents again while the store is unreachable.
_ADMITTED_MAX = 10_000
_ALL = ""  # in Relay._changed: every bridge may have changed
RATE_LIMITED_MESSAGE = "too many failed logins from this address; retry later"
BUSY_MESSAGE = "the relay is busy checking other logins; retry later"
_READ_SIZE = 4096
_UNREACHABLE = {
    ConnectStatus.DNS_FAILURE,
    ConnectStatus.CONNECTION_REFUSED,
    ConnectStatus.TIMEOUT,
    ConnectStatus.UNREACHABLE,
}


def _extra(**fields: Any) -> dict[str, Any]:
    return {"fields": fields}


def _log(level: int, message: str, **fields: Any) -> None:
    log.log(level, message, extra=_extra(**fields))


class _Dropped(Exception):
    """A connection is dropped before authentication, unanswered; the message says why."""


@attrs.frozen
class _Arrival:
    """What the gate hands a new agent connection's task."""

    ticket: Ticket
    peer: str  # ip:port as accepted
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class _WebSocketListen:
    path: str
    config: WebSocketConfig


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Retry(Exception):
    """An open failed before the agent answered: nothing reached the target, so another of
    the bridge's sessions may be tried. `error` is what to raise if none is left."""

    def __init__(self, error: Exception | None, reason: object = None) -> None:
        super().__init__(str(error or reason))
        self.error = error


class Relay:
    """Serves agents on one or more listeners and tunnels connections through them.

    `store` holds the bridges (`SQLiteStore`, `PostgresStore` or `MemoryStore`); `ssl_context`
    is the server context of the agent listener (see `relay.certificates.server_ssl_context`);
    `metrics` (a fresh `TunnelMetrics` if None) counts sessions, tunnels and refusals; `audit`,
    if given, is called with every audit event (see `add_audit_hook`).

    The store is only called from worker threads, never on the event loop, and never on the
    way of a tunnel's bytes. While it is unreachable, sessions and tunnels go on, agents of
    bridges admitted before are admitted again from memory (with credentials verified
    before), last seen times wait in memory and are written once it is back.
    """

    def __init__(
        self,
        store: Store,
        ssl_context: ssl.SSLContext,
        *,
        config: RelayConfig | None = None,
        metrics: TunnelMetrics | None = None,
        audit: AuditHook | None = None,
    ) -> None:
        self.store = store
        self.ssl_context = ssl_context
        self.config = config = config or RelayConfig()
        self.metrics = metrics or TunnelMetrics()
        #: Audit events go here: `relay.audit_trail.add_sink(...)`; run by `serve`.
        self.audit_trail = AuditTrail(
            self.metrics, config.audit, node=config.node or socket.gethostname()
        )
        if audit is not None:
            self.audit_trail.add_hook(audit)
        self.registry = Registry()
        self._verifier = Verifier(cost=config.bcrypt_cost, threads=config.bcrypt_threads)
        self._logins = LoginLimiter(config.auth_failures_per_minute, config.rate_limit_sources)
        self._bridge_logins = LoginLimiter(
            config.auth_failures_per_bridge, config.rate_limit_sources
        )
        #: (source, bridge ID) pairs that logged in: they skip the per-bridge budget and may
        #: use the reserved bcrypt threads.
        self._logged_in_from: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._bcrypt_all = trio.CapacityLimiter(config.bcrypt_threads)
        self._bcrypt_by_source: dict[str, int] = {}  # checks running or waiting, per source
        self._bcrypt_strangers = trio.CapacityLimiter(
            max(1, config.bcrypt_threads - config.bcrypt_reserved)
        )
        self._repeats: Repeats[str | tuple[str, str]] = Repeats(config.log_interval)
        self._admission = AdmissionGate(config.max_pending)
        #: Per bridge, the opens waiting for the agent's answer (`max_pending_opens`).
        self.open_slots = OpenSlots(config.max_pending_opens)
        self._drops = DropLog(config.log_interval)
        self._accepting: set[trio.CancelScope] = set()
        self._serving = 0  # serve_listeners calls whose listeners are not closed yet
        self._listeners_closed = trio.Event()  # set once stopping and none is left open
        self._stopping = False
        self._store = StoreAccess(store, threads=config.store_threads)
        self._admitted: OrderedDict[str, BridgeRecord] = OrderedDict()
        self._changed: set[str] = set()  # bridge IDs changed by others (_ALL: any)
        self._store_wake = trio.Event()
        self._listening = False  # the store notifies changes right now
        self._seen: dict[str, float] = {}  # last seen times not yet written
        self._seen_wake = trio.Event()
        #: Set by a worker of ``bridge-relay serve --workers``: hands a forward's or SOCKS
        #: client to the worker that holds its bridge (see `relay.handover.Handovers`).
        self.handover: Handovers | None = None
        #: The peer links of a cluster node, once `serve_peers` runs.
        self.peering: Peering | None = None
        self._node_wake = trio.Event()  # heartbeat now: the node's record changed
        #: Where agents reach this node (`RelayConfig.agent_advertise`, its port 0 made the
        #: agent port once `serve` listens): registered, and told to agents.
        self.agent_advertise: str | None = None
        #: The nodes agents asking for them are told of (`advertised_nodes`), as last sent.
        self._advertised: tuple[AdvertisedNode, ...] = ()
        self._advertised_wake = trio.Event()  # `_advertised` changed

    def __repr__(self) -> str:
        return f"<Relay store={self.store!r} sessions={len(self.registry)}>"

    @property
    def node(self) -> str:
        """This relay's name in audit events: `RelayConfig.node`, or the host name and the
        agent port once `serve` listens."""
        return self.audit_trail.node

    def add_audit_hook(self, hook: AuditHook) -> None:
        """Call `hook(event)` with every audit event from now on: a `relay.audit.TunnelEvent`
        per tunnel opened (or refused), still open every `AuditConfig.interval`, and closed.
        It runs in the audit task started by `serve`, never on the data path; it should
        return quickly (events queue behind it, up to `AuditConfig.queue_size`, then are
        dropped and counted). An exception it raises is logged, not propagated."""
        self.audit_trail.add_hook(hook)

    @property
    def pending(self) -> int:
        """Agent connections still in TLS or authentication."""
        return len(self._admission)

    @property
    def stopping(self) -> bool:
        """Whether `stop_accepting` (or `drain`) was called."""
        return self._stopping

    # -- listening -----------------------------------------------------------------------

    async def serve(
        self,
        host: str | None,
        port: int,
        *,
        listeners: list[trio.SocketListener] | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept agents over TLS on host:port until cancelled (port 0: any free port), and run
        the relay's housekeeping (store changes, log summaries).

        With `listeners` (sockets bound by another process, e.g. the parent of workers),
        those are served and host:port only name them. `task_status.started` gets the list
        of `trio.SocketListener`s. Raises OSError when it cannot listen. Cancelling it
        closes the listeners and ends every agent session at once, cutting their tunnels:
        call `drain` first to let them finish.
        """
        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=listen_backlog())
        bound = listeners[0].socket.getsockname()[1]
        if self.config.node is None:
            self.audit_trail.node = f"{socket.gethostname()}:{bound}"
        if (advertise := self.config.agent_advertise) is not None:
            self.agent_advertise = format_host_port(advertise[0], advertise[1] or bound)
            self._advertised_changed()
        node = await self._register_node(format_host_port(host or "0.0.0.0", bound))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, node)
            await nursery.start(self.audit_trail.run)
            nursery.start_soon(self._watch_store)
            nursery.start_soon(self._write_seen)
            nursery.start_soon(self._verifier.prepare)
            nursery.start_soon(self._report_repeats)
            handler = partial(self._handle_connection, None)
            await nursery.start(self.serve_listeners, handler, listeners, self._gate)
            task_status.started(listeners)

    async def serve_websocket(
        self,
        host: str | None,
        port: int,
        *,
        path: str = DEFAULT_PATH,
        config: WebSocketConfig | None = None,
        listeners: list[trio.SocketListener] | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept agents over WebSocket (wss://, upgrades to `path`) on host:port until
        cancelled, through the same gate, PROXY header handling, deadline and login as
        `serve` (run `serve` too: it does the housekeeping). The WebSocket's own sizes come
        from `config`; until an agent has authenticated it may send no more than a Hello.
        `task_status.started` gets the listeners (`listeners`, if given, bound elsewhere);
        they close on `stop_accepting`."""
        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=listen_backlog())
        websocket = _WebSocketListen(path, config or WebSocketConfig())
        handler = partial(self._handle_connection, websocket)
        await self.serve_listeners(handler, listeners, self._gate, task_status=task_status)

    async def serve_peers(
        self,
        host: str | None,
        port: int,
        *,
        identity: PeerIdentity,
        advertise: str | None = None,
        listeners: list[trio.SocketListener] | None = None,
        siblings: str | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept peer links from the other nodes of a cluster on host:port until cancelled
        (port 0: any free port), dial the nodes this one should (the lower name dials), and
        route `connect` to bridges held by other nodes (run `serve` too, first: it registers
        the node, names it when `RelayConfig.node` is None, and does the housekeeping).

        `identity` is this node's peer key and certificate (`PeerIdentity.ensure(data_dir)`);
        `advertise` is the HOST:PORT other nodes dial (default: the address listened on, or
        this host's name when that is a wildcard address). Both go to the node's record in
        the store at once. Connections go through the same gate and deadline as agents'.
        With `listeners` (bound by another process: the parent of workers, whose workers
        share them), those are served and host:port only name them; `siblings` is the
        prefix of the names of the nodes that share them (never linked: see
        `relay.peering`). `task_status.started` gets the listeners. Raises OSError when it
        cannot listen, CertificateError when the identity cannot serve TLS. Cancelling it
        ends every link.
        """
        from relay.peering import Peering

        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=listen_backlog())
        if advertise is None:
            bound = listeners[0].socket.getsockname()[1]
            shown = host if host and host not in ("0.0.0.0", "::") else socket.gethostname()
            advertise = format_host_port(shown, bound)
        peering = Peering(self, identity, advertise, self.config.peer, siblings=siblings)
        self.peering = peering
        _log(
            logging.INFO,
            "Peer listener ready",
            address=advertise,
            fingerprint=identity.fingerprint,
        )
        try:
            self._node_changed()
            await peering.run(listeners, task_status=task_status)
        finally:
            self.peering = None
            self._node_changed()

    def _node_changed(self) -> None:
        """This node's record changed (peer address, links): heartbeat at once."""
        self._node_wake.set()
        self._advertised_changed()

    def advertised_nodes(self) -> tuple[AdvertisedNode, ...]:
        """The nodes agents with the "nodes" capability are told of, with the address they
        reach each at, by name (every node tells the same list): this node unless it stops
        accepting, and the nodes it has a peer link with that do not drain; a node without
        `agent_advertise` (or of an older release) is left out. One entry per address, the
        first by name: the workers of one host (``--workers``) share theirs, and each names
        that host."""
        nodes = []
        if self.agent_advertise is not None and not self._stopping:
            host, port = parse_host_port(self.agent_advertise)
            nodes.append(AdvertisedNode(self.node, host, port, self.config.host))
        if self.peering is not None:
            nodes.extend(self.peering.advertised_nodes())
        by_address: dict[tuple[str, int], AdvertisedNode] = {}
        for node in sorted(nodes, key=lambda node: node.node):
            by_address.setdefault((node.host, node.port), node)
        return tuple(by_address.values())

    def _advertised_changed(self) -> None:
        """What `advertised_nodes` returns may have changed (a link, a node's record, a
        drain): the sessions that asked for it are sent the new list, if it is new."""
        nodes = self.advertised_nodes()
        if nodes != self._advertised:
            self._advertised = nodes
            self._advertised_wake.set()
            self._advertised_wake = trio.Event()

    async def _tell_nodes(self, agent: AgentSession) -> None:
        """Send the agent `advertised_nodes` on its control stream, and again at each
        change, until cancelled or the control stream is closed (an empty list only to
        replace one sent before)."""
        sent: tuple[AdvertisedNode, ...] = ()
        while True:
            nodes, changed = self._advertised, self._advertised_wake
            if nodes != sent:
                async with agent.control_lock:
                    if (control := agent.control) is None:
                        return
                    try:
                        await control.send_all(encode_control(ControlMessage.nodes(nodes)))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                sent = nodes
            await changed.wait()

    def _presence_changed(self) -> None:
        """The bridges held here changed: tell the peers (the store hears it with the next
        heartbeat; nothing routes by it)."""
        if self.peering is not None:
            self.peering.presence_changed()

    async def serve_listeners(
        self,
        handler: Callable[..., Awaitable[None]],
        listeners: list[trio.SocketListener],
        gate: Callable[[trio.SocketStream], Any] | None = None,
        *,
        ready: Callable[[], Awaitable[None]] | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like `trio.serve_listeners`, but the listeners close when the relay stops
        accepting, while the handlers of connections already accepted run on. `gate` is
        asked about each connection before it is handed to a task: None closes it at once,
        unread; anything else is passed to the handler after the stream. `ready`, if given,
        is awaited before each accept: while it waits, new connections stay in the
        listen backlog."""
        async with trio.open_nursery() as handlers:
            self._serving += 1
            try:
                with trio.CancelScope() as accepting, SpareDescriptor() as spare:
                    self._accepting.add(accepting)
                    if self._stopping:
                        accepting.cancel()
                    try:
                        async with trio.open_nursery() as loops:
                            for listener in listeners:
                                loops.start_soon(
                                    self._accept_loop,
                                    listener,
                                    handler,
                                    gate,
                                    handlers,
                                    spare,
                                    ready,
                                )
                            task_status.started(listeners)
                    finally:
                        self._accepting.discard(accepting)
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
            finally:
                self._serving -= 1
                if self._stopping and not self._serving:
                    self._listeners_closed.set()  # handlers of accepted connections run on

    def stop_accepting(self) -> None:
        """Close every listener (agents over TLS and WebSocket, forwards, SOCKS): connections
        already in go on, and no new tunnel is opened."""
        self._stopping = True
        self.audit_trail.stopping = True
        self._presence_changed()  # the other nodes stop sending opens here
        self._advertised_changed()  # agents stop being sent here
        for scope in self._accepting:
            scope.cancel()
        if not self._serving:
            self._listeners_closed.set()

    async def wait_listeners_closed(self) -> None:
        """After `stop_accepting`: return once every listener is closed (connections to them
        are refused from then on), while the connections already accepted go on. Cancelling
        it has no other effect."""
        await self._listeners_closed.wait()

    async def drain(self) -> None:
        """Stop accepting, tell every agent GoAway, and return once no stream is open.

        Waits on the sessions' own notice that their last stream closed, and for the tunnels
        this node opened through other nodes of a cluster to be closed. Raises
        nothing of its own; bound it with a deadline (a cancel scope) and cancel what is left
        afterwards: cancelling it leaves the relay stopped, with the streams still open.
        """
        self.stop_accepting()
        for agent in list(self.registry):
            await _leave(agent, "relay shutting down")

        # No stream opens once stopping, so a session found idle stays idle; an agent told to
        # move lets its session go once it has one on another node.
        def streaming(agent: AgentSession) -> bool:
            return not agent.mux.closed and agent.open_streams() > 0

        while busy := [a for a in self.registry if a.moving or streaming(a)]:
            if streaming(busy[0]):
                await busy[0].mux.wait_streams_closed()
            else:
                await busy[0].ended.wait()  # out of the registry once set
        # Tunnels this node opened through other nodes: their links stay up meanwhile.
        if self.peering is not None:
            await self.peering.wait_outbound_closed()

    def moving_agents(self) -> int:
        """While the relay stops: the sessions of agents that move to other nodes (the "move"
        capability) and have not let go yet."""
        return sum(agent.can_move for agent in self.registry) if self._stopping else 0

    def open_tunnels(self) -> int:
        """Tunnels open through this relay: through its agents' sessions (for callers on
        this node or on others), and through other nodes for callers on this one."""
        outbound = 0 if self.peering is None else self.peering.outbound_tunnels()
        return self.registry.open_streams_total() + outbound

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        handler: Callable[..., Awaitable[None]],
        gate: Callable[[trio.SocketStream], Any] | None,
        nursery: trio.Nursery,
        spare: SpareDescriptor,
        ready: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Accept connections on `listener` and hand each to `handler` in `nursery`, each
        once `ready` (if given) returns.

        Out of descriptors (or memory), the newest work is shed: the waiting connection is
        accepted on the spare descriptor and closed at once, with one log line per
        `log_interval`; connections already in go on."""
        while True:
            if ready is not None:
                await ready()
            stream = await accept_or_shed(listener, spare, self.note_shed)
            if gate is None:
                nursery.start_soon(handler, stream)
            elif (admitted := gate(stream)) is not None:
                nursery.start_soon(handler, stream, admitted)
            else:
                stream.socket.close()

    def note_shed(self, exc: OSError) -> None:
        """A listener of this relay's closed a new connection at once, out of descriptors:
        logged once per `log_interval` (the rest are summed up)."""
        if self._repeats.note("shed"):
            _log(logging.ERROR, SHED_MESSAGE, reason=os_reason(exc))

    # -- admission -----------------------------------------------------------------------

    def _gate(self, tcp: trio.SocketStream) -> _Arrival | None:
        """A pre-authentication slot for a new agent connection (see `AdmissionGate`), or
        None: close it unread."""
        try:
            address = tcp.socket.getpeername()
        except OSError:  # already gone
            return None
        ip = _ip(address[0])
        source = source_of(str(ip))
        ticket = self._admission.admit(source)
        if ticket is None:
            if self._repeats.note("pending"):
                _log(
                    logging.WARNING,
                    "Too many connections awaiting authentication: closing new ones unread",
                    limit=self.config.max_pending,
                    source=source,
                )
            return None
        return _Arrival(ticket, format_socket_address(address), ip)

    async def _handle_connection(
        self, websocket: _WebSocketListen | None, tcp: trio.SocketStream, arrival: _Arrival
    ) -> None:
        """One agent connection, from accept to the end of its session. Never raises: a
        misbehaving connection is logged and dropped."""
        ticket, peer = arrival.ticket, arrival.peer
        transport: trio.abc.Stream | None = None
        try:
            with trio.CancelScope(
                deadline=trio.current_time() + self.config.handshake_timeout
            ) as handshake:
                ticket.on_eviction(handshake.cancel)
                if self.config.proxy_protocol:
                    peer = await self._proxy_header(tcp, arrival)
                    ticket.move(source_of(peer))
                transport = TLSStream.wrap(tcp, self.ssl_context, server_side=True)
                if websocket is None:
                    await transport.do_handshake()
                    await self._login(transport, peer, ticket, handshake)
                else:
                    async with accept_websocket(
                        transport,
                        path=websocket.path,
                        config=websocket.config,
                        receive_limit=MAX_HELLO + FRAME_OVERHEAD,
                    ) as stream:
                        await self._login(stream, peer, ticket, handshake)
            if handshake.cancelled_caught and not ticket.released:  # released once admitted
                if ticket.evicted:
                    self._dropped(peer, ticket, "closed for a connection from another address")
                else:
                    self._dropped(peer, ticket, "handshake timed out")
        except (_Dropped, WebSocketError) as exc:
            self._dropped(peer, ticket, str(exc))
        except Exception as exc:
            if (broken := connection_failure(exc)) is None:
                log.exception("Unexpected error on agent connection", extra=_extra(peer=peer))
            elif ticket.released:  # admitted: its session broke
                _log(logging.INFO, "Connection dropped", peer=peer, reason=failure_reason(broken))
            else:
                self._dropped(peer, ticket, failure_reason(broken))
        finally:
            ticket.release()
            await trio.aclose_forcefully(transport if transport is not None else tcp)

    def _dropped(self, peer: str, ticket: Ticket, reason: str, message: str = "") -> None:
        """Log a connection dropped before authentication, within the log's budget."""
        if self._drops.note(reason, ticket.source):
            _log(logging.INFO, message or "Connection dropped", peer=peer, reason=reason)

    async def _proxy_header(self, tcp: trio.SocketStream, arrival: _Arrival) -> str:
        """The connection's real source `ip:port`: from the PROXY header a trusted load
        balancer sends first (read exactly, nothing after it), else the peer's own. Raises
        `_Dropped` for a header from anyone else, and for a missing or malformed one."""
        sock = tcp.socket
        if not any(arrival.ip in network for network in self.config.proxy_protocol):
            if starts_like_proxy_header(await sock.recv(1, socket.MSG_PEEK)):
                raise _Dropped("PROXY header from an address not trusted to send one")
            return arrival.peer
        buffer = b""
        while True:
            data = await sock.recv(MAX_PROXY_HEADER - len(buffer), socket.MSG_PEEK)
            if not data:
                raise _Dropped("closed before the PROXY header")
            try:
                parsed = parse_proxy_header(buffer + data)
            except ProxyHeaderError as exc:
                raise _Dropped(f"malformed PROXY header: {exc}") from None
            if parsed is None:  # all of it belongs to the header
                await sock.recv(len(data))
                buffer += data
                continue
            header, size = parsed
            await sock.recv(size - len(buffer))
            if header.source is None:
                return arrival.peer
            return format_host_port(*header.source)

    async def _login(
        self,
        transport: trio.abc.Stream,
        peer: str,
        ticket: Ticket,
        handshake: trio.CancelScope,
    ) -> None:
        """The Hello and its answer, then (once admitted, free of the handshake's deadline and
        of its slot: `ticket` is released) the session."""
        admitted = await self._admit(transport, peer, ticket)
        if admitted is None:
            return
        handshake.deadline = math.inf
        ticket.release()
        if isinstance(transport, WebSocketStream):
            transport.lift_receive_limit()
        record, hello, agreement, leftover, arrival = admitted
        try:
            await self._run_session(
                transport, peer, record, hello, leftover, agreement=agreement, arrival=arrival
            )
        finally:
            arrival.settle()
            self.registry.release_session(record.id)

    async def _admit(
        self, transport: trio.abc.Stream, peer: str, ticket: Ticket
    ) -> tuple[BridgeRecord, Hello, Agreement, bytes, Arrival] | None:
        """Reads the Hello and answers it, in the highest version both sides speak.

        The (record, hello, agreement, leftover, arrival) of an admitted agent: callers wait
        for its session from before the Welcome goes out until `arrival` is settled."""
        parser = HelloParser()
        agreement = None
        try:
            while True:
                data = await transport.receive_some(MAX_HELLO)
                if not data:
                    self._dropped(peer, ticket, "closed during the handshake")
                    return None
                if (hello := parser.feed(data)) is not None:
                    break
            ticket.protect()
            if (agreement := negotiate(hello)) is None:
                offered = ", ".join(map(str, sorted(hello.versions()))) or "none"
                raise Refused(
                    WelcomeStatus.UNSUPPORTED_VERSION,
                    f"no common bridge protocol version: the agent speaks {offered}, "
                    f"this relay {', '.join(map(str, VERSIONS))}",
                )
            record = await self._authenticate(hello, peer, ticket.source)
            self._claim_session(record)
        except UnsupportedVersion as exc:
            refusal = Refused(
                WelcomeStatus.UNSUPPORTED_VERSION,
                f"{exc}; this relay reads Hello version {HELLO_VERSION}",
            )
        except HandshakeError as exc:
            refusal = Refused(WelcomeStatus.MALFORMED, f"malformed handshake: {exc}")
        except Refused as exc:
            refusal = exc
        else:
            welcome = welcome_for(
                agreement,
                WelcomeStatus.OK,
                f"connected as bridge {record.name}",
                node=self.node,
                host=self.config.host,
            )
            # The agent counts itself connected once it reads this: from now on a caller of the
            # bridge waits for the session's registration instead of being turned away.
            arrival = self.registry.arrive(record.id, record.name)
            try:
                await transport.send_all(encode_welcome(welcome))
            except BaseException:
                arrival.settle()
                self.registry.release_session(record.id)
                raise
            return record, hello, agreement, parser.leftover, arrival
        if refusal.status not in (WelcomeStatus.AUTH_FAILED, WelcomeStatus.BUSY):
            self._dropped(peer, ticket, refusal.message, "Handshake refused")
        welcome = welcome_for(agreement, refusal.status, refusal.message)
        await transport.send_all(encode_welcome(welcome))
        await transport.aclose()
        return None

    def _claim_session(self, record: BridgeRecord) -> None:
        """Take one of the bridge's `max_sessions_per_bridge` session slots, or refuse the
        login (BUSY): the sessions already up are kept."""
        limit = self.config.max_sessions_per_bridge
        if not self.registry.claim_session(record.id, limit):
            if self._repeats.note(("sessions", record.name)):
                _log(
                    logging.WARNING,
                    "Login refused: the bridge has as many sessions as allowed",
                    bridge=record.name,
                    limit=limit,
                )
            raise Refused(
                WelcomeStatus.BUSY,
                f"bridge {record.name} already has {limit} agent sessions, the most this relay "
                "allows (--max-sessions-per-bridge); retrying later",
            )

    async def _find(self, bridge_id: str) -> tuple[BridgeRecord | None, bool]:
        """(the record of `bridge_id`, whether it came from the store). While the store is
        unreachable or slower than `store_login_wait`, the record this relay admitted last."""
        if self._store.healthy:
            with trio.move_on_after(self.config.store_login_wait):
                try:
                    return await self._store.run(self.store.find, bridge_id), True
                except StoreError:
                    pass
        return self._admitted.get(bridge_id), False

    async def _authenticate(self, hello: Hello, peer: str, source: str) -> BridgeRecord:
        try:
            record, fresh = await self._find(hello.bridge_id)
        except Exception:
            log.exception("Bridge store failed", extra=_extra(peer=peer))
            raise Refused(WelcomeStatus.INTERNAL_ERROR, "internal error") from None
        if record is not None and record.id != hello.bridge_id:
            record = None  # agents authenticate by ID, not by name
        if record is None and not fresh:
            raise Refused(WelcomeStatus.BUSY, STORE_UNAVAILABLE_MESSAGE)
        stored_hash = None if record is None else record.secret_hash
        secret = hello.secret.encode()
        charged: list[tuple[LoginLimiter, str]] = []
        budget = partial(self._bcrypt_slot, source, hello.bridge_id, charged)
        try:
            # While the store cannot be asked, only credentials verified before get in.
            verified = await self._verifier.verify(
                hello.bridge_id, stored_hash, secret, cached_only=not fresh, budget=budget
            )
        except Refused:
            self.metrics.auth_failures.inc(listener="agent")
            raise
        if verified:
            assert record is not None
            _refund(charged)
            if fresh:  # the record is the store's: raise its bcrypt cost if it is lower
                record = await self._rehashed(record, secret)
            self._admitted[record.id] = record
            self._admitted.move_to_end(record.id)
            while len(self._admitted) > _ADMITTED_MAX:
                self._admitted.popitem(last=False)
            self._logged_in_from[(source, record.id)] = None
            self._logged_in_from.move_to_end((source, record.id))
            while len(self._logged_in_from) > self.config.rate_limit_sources:
                self._logged_in_from.popitem(last=False)
            return record
        if not fresh:
            raise Refused(WelcomeStatus.BUSY, STORE_UNAVAILABLE_MESSAGE)
        self.metrics.auth_failures.inc(listener="agent")
        if self._logins.failed(source):
            _log(
                logging.WARNING,
                "Authentication failed",
                bridge_id=_loggable_id(hello.bridge_id),
                peer=peer,
            )
        raise Refused(WelcomeStatus.AUTH_FAILED, AUTH_FAILED_MESSAGE)

    @asynccontextmanager
    async def _bcrypt_slot(
        self, source: str, bridge_id: str, charged: list[tuple[LoginLimiter, str]]
    ) -> AsyncIterator[None]:
        """Entered around each bcrypt check a login needs: charges the attempt to its source
        address (and to the bridge ID, unless this address logged in as it before), then
        waits up to `bcrypt_wait` for a bcrypt slot. Raises `Refused` (BUSY) when the
        address already has `bcrypt_per_source` checks running or waiting, when a budget is
        spent, or when no slot comes in time."""
        known = (source, bridge_id) in self._logged_in_from
        in_flight = self._bcrypt_by_source.get(source, 0)
        if in_flight >= self.config.bcrypt_per_source:
            raise Refused(WelcomeStatus.BUSY, BUSY_MESSAGE)
        self._bcrypt_by_source[source] = in_flight + 1
        try:
            async with self._charged_slot(source, bridge_id, known, charged):
                yield
        finally:
            if self._bcrypt_by_source[source] > 1:
                self._bcrypt_by_source[source] -= 1
            else:
                del self._bcrypt_by_source[source]

    @asynccontextmanager
    async def _charged_slot(
        self, source: str, bridge_id: str, known: bool, charged: list[tuple[LoginLimiter, str]]
    ) -> AsyncIterator[None]:
        budgets = [(self._logins, source)]
        if not known:
            budgets.append((self._bridge_logins, bridge_id))
        for budget, key in budgets:
            if not budget.charge(key):
                _refund(charged)
                raise Refused(WelcomeStatus.BUSY, RATE_LIMITED_MESSAGE)
            charged.append((budget, key))
        slots = [self._bcrypt_all] if known else [self._bcrypt_strangers, self._bcrypt_all]
        held: list[trio.CapacityLimiter] = []
        try:
            with trio.move_on_after(self.config.bcrypt_wait):
                for slot in slots:
                    await slot.acquire()
                    held.append(slot)
            if len(held) < len(slots):
                _refund(charged)
                if self._repeats.note("bcrypt"):
                    _log(
                        logging.WARNING,
                        "Logins answered BUSY: no bcrypt slot free in time",
                        threads=self.config.bcrypt_threads,
                        wait=self.config.bcrypt_wait,
                    )
                raise Refused(WelcomeStatus.BUSY, BUSY_MESSAGE)
            yield
        finally:
            for slot in reversed(held):
                slot.release()

    async def _run_session(
        self,
        transport: trio.abc.Stream,
        peer: str,
        record: BridgeRecord,
        hello: Hello,
        leftover: bytes,
        *,
        agreement: Agreement,
        arrival: Arrival,
    ) -> None:
        if leftover:
            transport = PrefixedStream(transport, leftover)
        fields = {"bridge": record.name, "id": record.id, "peer": peer}
        agent = AgentSession(record.id, record.name, peer, record.secret_hash, info=hello.info)
        session = None
        try:
            async with mux.open_session(transport, client=False, config=self.config.mux) as session:
                agent.mux = session
                if "control" in agreement.capabilities:
                    agent.control = await session.open_stream()  # the first stream: see PROTOCOL.md
                    agent.can_move = "move" in agreement.capabilities
                self.registry.add(agent)
                arrival.settle()
                self._presence_changed()
                self.metrics.sessions.inc(bridge=record.name)
                try:
                    with agent.cancel_scope:
                        _log(
                            logging.INFO,
                            "Bridge connected",
                            **fields,
                            agents=len(self.registry.sessions(record.id)),
                        )
                        self._mark_seen(record.id)
                        # The store may have changed while we verified.
                        self._changed.add(record.id)
                        self._store_wake.set()
                        if self._stopping:
                            await _leave(agent, "relay shutting down")
                        async with trio.open_nursery() as nursery:
                            if "nodes" in agreement.capabilities and agent.control is not None:
                                nursery.start_soon(self._tell_nodes, agent)
                            async for stream in session:  # agents never open streams: RST
                                stream.reset()
                            nursery.cancel_scope.cancel()
                finally:
                    self.registry.remove(agent)
                    agent.ended.set()
                    self._presence_changed()
                    self.metrics.sessions.dec(bridge=record.name)
                if agent.close_reason is not None:
                    await _tell_closing(agent, agent.close_reason)
        finally:
            ended = session.close_reason if session is not None else None
            level, reason = logging.INFO, agent.close_reason
            # Cancelled here: the relay stops now (it cut the session, whatever it told it).
            cut = trio.current_effective_deadline() == -math.inf
            if reason is None:
                if agent.moving and ended is not None and ended.clean and not cut:
                    reason = "moved to another node"  # told to, it let this one go
                elif self._stopping or ended is None:
                    reason = "relay shutting down"
                else:
                    reason = str(ended)
                    level = logging.INFO if ended.clean else logging.WARNING
            self._mark_seen(record.id)
            _log(
                level,
                "Bridge disconnected",
                **fields,
                reason=reason,
                duration=round(time.time() - agent.connected_at, 3),
            )

    async def _rehashed(self, record: BridgeRecord, secret: bytes) -> BridgeRecord:
        """The record of a bridge that just logged in, its secret rehashed at the relay's
        bcrypt cost and stored if it had less (so that it is no faster to check than others)."""
        new_hash = await self._verifier.rehash(record.id, record.secret_hash, secret)
        if new_hash is None:
            return record
        try:
            stored = await self._store.run(
                self.store.rehash, record.id, record.secret_hash, new_hash
            )
        except Exception as exc:
            _log(logging.WARNING, "Cannot store a rehashed secret", id=record.id, reason=str(exc))
            return record
        if not stored:  # rotated or deleted meanwhile: revalidation sees to it
            return record
        _log(
            logging.INFO,
            "Bridge secret rehashed at the relay's bcrypt cost",
            bridge=record.name,
            id=record.id,
            cost=self.config.bcrypt_cost,
        )
        return attrs.evolve(record, secret_hash=new_hash)

    def _mark_seen(self, bridge_id: str) -> None:
        """Record the time in memory; `_write_seen` writes it to the store."""
        self._seen[bridge_id] = time.time()
        self._seen_wake.set()

    async def _write_seen(self) -> None:
        """Writes last seen times, retried while the store is unreachable. Holds one time
        per bridge at most: a newer one replaces an older one not yet written."""
        while True:
            await self._seen_wake.wait()
            self._seen_wake = trio.Event()
            while self._seen:
                bridge_id, when = next(iter(self._seen.items()))
                try:
                    await self._store.run(self.store.mark_seen, bridge_id, when)
                except StoreError:
                    await trio.sleep(self.config.store_retry_interval)
                    continue
                except Exception as exc:
                    _log(
                        logging.WARNING,
                        "Cannot record last seen time",
                        id=bridge_id,
                        reason=str(exc),
                    )
                if self._seen.get(bridge_id) == when:
                    del self._seen[bridge_id]

    async def _report_repeats(self) -> None:
        """Sum up the refusals that were not logged one by one."""
        interval = self.config.log_interval
        while True:
            await trio.sleep(min(1.0, interval))
            for source, count, seconds in self._logins.summaries(interval):
                _log(
                    logging.WARNING,
                    f"Authentication failures from {source}: {count} in the last {seconds:.0f} s",
                    source=source,
                    failures=count,
                    limit=f"{self.config.auth_failures_per_minute} per minute",
                )
            if (drops := self._drops.summary()) is not None:
                _log(
                    logging.INFO,
                    drops.describe(),
                    dropped=drops.count,
                    reasons=drops.reasons,
                    sources=dict(drops.sources),
                )
            for key, count, seconds in self._repeats.summaries():
                if key == "bcrypt":
                    _log(
                        logging.WARNING,
                        f"Logins answered BUSY, no bcrypt slot free in time: {count} more in the"
                        f" last {seconds:.0f} s",
                        refused=count,
                    )
                elif key == "pending":
                    _log(
                        logging.WARNING,
                        f"Connections closed unread, over the limit of {self.config.max_pending}"
                        f" awaiting authentication: {count} more in the last {seconds:.0f} s",
                        refused=count,
                    )
                elif key == "shed":
                    _log(
                        logging.ERROR,
                        f"Connections closed at once, out of file descriptors: {count} more in "
                        f"the last {seconds:.0f} s",
                        refused=count,
                    )
                elif key[0] == "sessions":
                    _log(
                        logging.WARNING,
                        f"Logins refused, bridge {key[1]} at its limit of "
                        f"{self.config.max_sessions_per_bridge} sessions: {count} more in the last"
                        f" {seconds:.0f} s",
                        bridge=key[1],
                        refused=count,
                    )
                else:
                    _log(
                        logging.WARNING,
                        f"Tunnels refused, bridge {key[1]} at its limit: {count} more in the last"
                        f" {seconds:.0f} s",
                        bridge=key[1],
                        refused=count,
                    )

    # -- this node in the store -----------------------------------------------------------

    async def _register_node(self, agent_address: str) -> NodeRecord:
        """This relay in the store's node list; an unreachable store is only logged (the
        heartbeat retries). A name that another process heartbeated within the node timeout
        is taken over with a warning: usually this relay's own predecessor, killed and
        restarted; if another relay runs with the same name, it logs that it lost it."""
        record = NodeRecord(
            self.node,
            uuid.uuid4().hex,
            agent_address,
            started_at=round(time.time(), 3),
            agent_advertise=self.agent_advertise,
        )
        try:
            try:
                await self._store.run(self.store.claim_node, record, self.config.node_timeout)
            except NodeNameTaken:
                _log(
                    logging.WARNING,
                    "Node name taken over from a process that heartbeated within the node "
                    "timeout (a relay that was killed, or another relay with this name)",
                    node=record.name,
                )
                await self._store.run(self.store.claim_node, record, 0)
        except StoreError:
            pass
        return record

    async def _heartbeat(self, record: NodeRecord) -> None:
        """Heartbeats every third of the node timeout with the bridges held and tunnels open;
        removes this relay from the node list on the way out."""
        timeout = self.config.node_timeout
        taken = False
        try:
            while True:
                with trio.move_on_after(timeout / 3):
                    await self._node_wake.wait()
                    await trio.sleep(0.1)  # changes come in bursts: one write for them
                self._node_wake = trio.Event()
                held = sorted({agent.bridge_id for agent in self.registry})
                peering = self.peering
                record = attrs.evolve(
                    record,
                    bridges=len(held),
                    streams=self.registry.open_streams_total(),
                    peer_address=None if peering is None else peering.advertise,
                    peer_fingerprint=None if peering is None else peering.fingerprint,
                    held=held,
                    links=() if peering is None else sorted(peering.links),
                )
                try:
                    await self._store.run(self.store.claim_node, record, timeout)
                    taken = False
                except StoreError:
                    pass
                except NodeNameTaken as exc:
                    if not taken:  # once per takeover, not per heartbeat
                        _log(logging.WARNING, "Node name held by another relay", reason=str(exc))
                    taken = True
        finally:
            with trio.move_on_after(2, shield=True):
                try:
                    await self._store.run(self.store.remove_node, record.name, record.instance)
                except StoreError:
                    pass

    # -- store changes -------------------------------------------------------------------

    async def _watch_store(self) -> None:
        """Follows changes made by other processes: notified ones at once (a store with
        `listen`), and any change at the next poll of `generation()`."""
        async with trio.open_nursery() as nursery:
            if (listen := getattr(self.store, "listen", None)) is not None:
                nursery.start_soon(self._listen_store, listen)
            seen = None
            while True:
                changed, self._changed = self._changed, set()
                self._store_wake = trio.Event()
                try:
                    generation = await self._store.run(self.store.generation)
                    if generation != seen:
                        await self._note_costs()
                    if _ALL in changed or (
                        seen is not None and generation != seen and not self._listening
                    ):
                        await self.revalidate()
                    elif changed:
                        await self.revalidate(changed)
                    seen = generation
                except StoreError:
                    self._changed |= changed  # checked again once the store is back
                except Exception as exc:
                    _log(logging.WARNING, "Cannot read the bridge store", reason=str(exc))
                interval = self.config.store_poll_interval
                if self._listening:
                    interval = self.config.store_check_interval
                with trio.move_on_after(interval):
                    await self._store_wake.wait()

    async def _note_costs(self) -> None:
        """Unknown IDs are checked at the highest bcrypt cost of the stored secrets. Raises
        StoreError if the store cannot be read."""
        records = await self._store.run(self.store.list)
        self._verifier.note_costs(cost_of(record.secret_hash) for record in records)

    async def _listen_store(self, listen: Callable[..., Awaitable[None]]) -> None:
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(listen, self._store_changed)
                    self._store.succeeded()
                    self._listening = True
                    self._store_changed(_ALL)  # changes made while not listening
            except* StoreError as group:
                first = group.exceptions[0]
                self._store.failed(first if isinstance(first, StoreError) else StoreError(first))
            except* Exception as group:
                reason = f"bridge store notifications: {group.exceptions[0]!r}"
                self._store.failed(StoreError(reason))
            finally:
                self._listening = False
            await trio.sleep(self.config.store_retry_interval)

    def _store_changed(self, bridge_id: str) -> None:
        self._changed.add(bridge_id)
        self._store_wake.set()

    async def revalidate(self, bridge_ids: set[str] | None = None) -> None:
        """Close the sessions of bridges deleted or rotated since they were admitted: those
        in `bridge_ids`, or all. Raises StoreError if the store cannot be read."""
        ids = {agent.bridge_id for agent in self.registry}
        if bridge_ids is not None:
            ids &= bridge_ids
        for bridge_id in ids:
            record = await self._store.run(self.store.find, bridge_id)
            if record is None:
                self._admitted.pop(bridge_id, None)
                self._verifier.forget(bridge_id)
            else:
                self._admitted[bridge_id] = record
            for agent in self.registry.sessions(bridge_id):
                if record is None:
                    agent.close(BRIDGE_DELETED)
                elif same_secret(agent.secret_hash, record.secret_hash):
                    agent.secret_hash = record.secret_hash  # rehashed at a higher cost
                else:
                    agent.close(SECRET_ROTATED)

    # -- tunnels -------------------------------------------------------------------------

    def is_connected(self, bridge: str) -> bool:
        """Whether an agent of `bridge` (a name or ID) is connected right now, to this node
        or to a node this one has a peer link with."""
        if self.registry.sessions(bridge):
            return True
        return self.peering is not None and self.peering.holds(bridge)

    async def connect(
        self, bridge: str, host: str, port: int, *, caller: Caller | str | None = None
    ) -> trio.abc.HalfCloseableStream:
        """A stream to host:port through `bridge` (its name or ID).

        The bridge's session on this relay is used, or (with `serve_peers`) one on another
        node of the cluster, through one peer link: this node's own unless its sessions are
        at `max_streams_per_bridge`, else the node with the fewest open streams.
        `caller` names who asks in the audit trail: a label of the embedding code's choice
        (a user, a request ID; never a secret) or a `relay.audit.Caller`.

        Raises `BridgeNotConnected`, `TargetNotAllowed`, `TargetUnreachable`, `BridgeBusy`
        or another `TunnelError`, each carrying the agent's own message when it gave one;
        `RelayShuttingDown` while the relay drains; ValueError for a host or port that
        cannot be sent. When `max_pending_opens` of the bridge's opens already wait for
        the agent's answer, it waits for a slot behind them (first come, first served) for
        at most ``connect_timeout`` (then `BridgeBusy`, saying so); then it waits at most
        ``connect_timeout`` for the agent's answer (then `TargetUnreachable`). Cancelling
        it abandons the attempt (the agent's side is reset).
        The caller owns the returned stream and must close it.
        """
        stream, _ = await self._open(bridge, host, port, Caller.of(caller))
        return stream

    async def probe(
        self, bridge: str, host: str, port: int, *, caller: Caller | str | None = None
    ) -> str:
        """Check that `bridge` reaches host:port; returns the address the agent dialed.
        Raises what `connect` raises; the tunnel is closed before it returns."""
        stream, reply = await self._open(bridge, host, port, Caller.of(caller))
        await trio.aclose_forcefully(stream)
        return reply.message or format_host_port(host, port)

    async def _open(
        self, bridge: str, host: str, port: int, caller: Caller, *, remote: bool = True
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        """A tunnel through `bridge`: this node's session, or (with `remote`) a node linked
        to this one that holds the bridge."""
        if not self.audit_trail.enabled:
            return await self._open_tunnel(bridge, host, port, caller, 0.0, remote)
        started = time.monotonic()
        try:
            return await self._open_tunnel(bridge, host, port, caller, started, remote)
        except (Exception, trio.Cancelled) as exc:
            if getattr(exc, "audited_elsewhere", False):  # by the node holding the bridge
                raise
            sessions = self.registry.sessions(bridge)
            name, bridge_id = bridge, None
            if sessions:
                name, bridge_id = sessions[0].bridge_name, sessions[0].bridge_id
            target = format_host_port(host, port)
            agent = getattr(exc, "answered_by", None)
            self.audit_trail.failed(
                name, bridge_id, caller, target, agent=agent, started=started, error=exc
            )
            raise

    async def _open_tunnel(
        self,
        bridge: str,
        host: str,
        port: int,
        caller: Caller,
        started: float,
        remote: bool = True,
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        request = encode_connect_request(ConnectRequest(host, port))
        target = format_host_port(host, port)
        if self._stopping:
            raise RelayShuttingDown(_SHUTTING_DOWN)
        sessions = self.registry.sessions(bridge)
        peering = self.peering if remote else None
        # A local session is preferred unless it is at its stream limit.
        if (
            peering is not None
            and (not sessions or self._streams_full(sessions[0].bridge_id))
            and peering.holds(bridge)
        ):
            try:
                return await peering.open(bridge, host, port, caller)
            except BridgeNotConnected:
                sessions = self.registry.sessions(bridge)  # gone meanwhile: local, if any
        if not sessions and self.registry.is_arriving(bridge):
            # An agent was just welcomed: its session is moments from being registered.
            with trio.move_on_after(self.config.connect_timeout):
                while not sessions and self.registry.is_arriving(bridge):
                    await self.registry.wait_arrival()
                    sessions = self.registry.sessions(bridge)
        if not sessions:
            self.metrics.refused.inc(reason="not_connected")
            known = await self._known(bridge)
            _log(
                logging.WARNING,
                "Tunnel refused",
                bridge=bridge,
                target=target,
                reason="not connected" if known else "unknown bridge",
            )
            raise BridgeNotConnected(bridge, known=known)
        bridge_id, name = sessions[0].bridge_id, sessions[0].bridge_name
        slots = self.open_slots
        if slots.full(bridge_id):
            # A burst queues (first come, first served) rather than being refused; only the
            # connect deadline refuses it.
            with trio.move_on_after(self.config.connect_timeout) as waiting:
                await slots.wait(bridge_id)
            if waiting.cancelled_caught:
                # Refused because every slot was held: the limit says so, whatever the
                # holders whose deadlines fell at the same moment have released since.
                self.metrics.refused.inc(reason="busy")
                raise self._busy(
                    bridge_id,
                    name,
                    f"Bridge {name}: no slot for a new connection within "
                    f"{self.config.connect_timeout:g} s ({slots.limit} waiting for "
                    "the agent's answer)",
                )
        else:
            slots.take(bridge_id)
        try:
            if self._stopping:  # it began to while this open waited for its slot
                raise RelayShuttingDown(_SHUTTING_DOWN)
            self._check_streams(bridge_id, name)
            return await self._open_on_any(
                bridge_id, request, name, target, caller=caller, started=started
            )
        except TunnelError as exc:
            busy = isinstance(exc, BridgeBusy)
            self.metrics.refused.inc(reason="busy" if busy else _reason(exc.status))
            if not busy:
                _log(logging.WARNING, "Tunnel refused", bridge=name, target=target, reason=str(exc))
            raise
        finally:
            slots.release(bridge_id)

    async def wait_for_open_slot(self, bridge: str) -> None:
        """Returns once `bridge` (a name or ID) has room for a new open without waiting: at
        once when it is not connected or not at its `max_pending_opens`. Takes no slot; a
        forward waits here before it accepts, so that a burst stays in the listen backlog.
        Cancellable."""
        if sessions := self.registry.sessions(bridge):
            await self.open_slots.wait_for_room(sessions[0].bridge_id)

    async def _known(self, bridge: str) -> bool:
        """Whether the store has a bridge of this name or ID: the ID of one admitted before
        has, else the store is asked through its worker threads (True when it cannot tell
        within `store_login_wait`)."""
        if bridge in self._admitted:
            return True
        with trio.move_on_after(self.config.store_login_wait):
            try:
                return await self._store.run(self.store.find, bridge) is not None
            except StoreError:
                return True
        return True

    def _stream_count(self, bridge_id: str) -> int:
        # Opens still on their way to a session count too: they become open streams later.
        return self.registry.open_streams(bridge_id) + self.registry.opening.get(bridge_id, 0)

    def _streams_full(self, bridge_id: str) -> bool:
        """Whether this node's sessions of the bridge are at `max_streams_per_bridge`."""
        return self._stream_count(bridge_id) >= self.config.max_streams_per_bridge

    def _check_streams(self, bridge_id: str, name: str) -> None:
        count = self._stream_count(bridge_id)
        if count >= self.config.max_streams_per_bridge:
            raise self._busy(bridge_id, name, f"Bridge {name}: {count} streams open, the limit")

    def _busy(self, bridge_id: str, name: str, message: str) -> BridgeBusy:
        if self._repeats.note(("busy", name)):
            _log(logging.WARNING, "Tunnel refused", bridge=name, reason=message)
        return BridgeBusy(message)

    async def _open_on_any(
        self,
        bridge_id: str,
        request: bytes,
        name: str,
        target: str,
        *,
        caller: Caller,
        started: float,
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        """Try the bridge's sessions, least loaded first, until one gets an answer."""
        tried: set[AgentSession] = set()
        failure: Exception | None = None
        while candidates := [s for s in self.registry.candidates(bridge_id) if s not in tried]:
            agent = candidates[0]
            tried.add(agent)
            try:
                return await self._open_on(
                    agent, request, name, target, caller=caller, asked=started
                )
            except TunnelError as exc:
                exc.answered_by = agent  # type: ignore[attr-defined]  # for the audit trail
                raise
            except _Retry as retry:
                failure = retry.error or failure
                _log(
                    logging.INFO,
                    "Retrying a tunnel on another agent",
                    bridge=name,
                    target=target,
                    peer=agent.peer,
                    reason=str(retry),
                )
        if failure is not None:
            raise failure
        if self._stopping:  # the sessions went away with this relay's own drain
            raise RelayShuttingDown(_SHUTTING_DOWN)
        raise BridgeNotConnected(name)

    async def _open_on(
        self,
        agent: AgentSession,
        request: bytes,
        bridge: str,
        target: str,
        *,
        caller: Caller,
        asked: float,
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        started = time.monotonic()
        try:
            # Counted from `_check_streams` on (no checkpoint lies between) until the session
            # counts the stream itself.
            with self.registry.opening_stream(agent.bridge_id):
                stream = await agent.mux.open_stream()
        except mux.SessionClosed as exc:
            # That session is going away (it ended, or said or got GoAway).
            raise _Retry(None, exc) from None
        reply = None  # stays None if the agent does not answer within connect_timeout
        try:
            with trio.move_on_after(self.config.connect_timeout):
                await send_eagerly(stream, request)
                parser = ConnectReplyParser()
                while (reply := parser.feed(data := await stream.receive_some(_READ_SIZE))) is None:
                    if not data:
                        raise _Retry(
                            TunnelError(
                                f"Bridge {bridge} closed the connection to {target} "
                                "without answering"
                            )
                        )
        except mux.StreamReset:
            await trio.aclose_forcefully(stream)
            raise _Retry(TunnelError(f"Bridge {bridge} reset the connection to {target}")) from None
        except mux.SessionClosed as exc:
            await trio.aclose_forcefully(stream)
            raise _Retry(None, exc) from None
        except ConnectError as exc:
            await _reset(stream)
            raise TunnelError(f"Bridge {bridge} sent an invalid reply: {exc}") from None
        except BaseException:
            await _reset(stream)
            raise
        if reply is None:
            await _reset(stream)
            raise TargetUnreachable(
                f"No answer from bridge {bridge} about {target} within "
                f"{self.config.connect_timeout:g} s",
                status=ConnectStatus.TIMEOUT,
            )
        if reply.status == ConnectStatus.OK:
            tunnel = PrefixedStream(stream, parser.leftover) if parser.leftover else stream
            elapsed = time.monotonic() - started
            metered = self.metrics.opened(tunnel, agent.bridge_name, elapsed)
            if self.audit_trail.enabled:
                self.audit_trail.opened(metered, agent, caller, target, asked)
            return metered, reply
        await trio.aclose_forcefully(stream)
        message = reply.message or f"{reply.status.name.replace('_', ' ').lower()}: {target}"
        if reply.status == ConnectStatus.NOT_ALLOWED:
            raise TargetNotAllowed(message, status=reply.status)
        if reply.status in _UNREACHABLE:
            raise TargetUnreachable(message, status=reply.status)
        raise TunnelError(message, status=reply.status)


_SHUTTING_DOWN = "The relay is shutting down: it opens no new tunnels"


def _refund(charged: list[tuple[LoginLimiter, str]]) -> None:
    """Give back the login budget charged for a check that succeeded or never ran."""
    for budget, key in charged:
        budget.refund(key)
    charged.clear()


def _reason(status: ConnectStatus | None) -> str:
    """The `reason` label of a refused tunnel: the agent's status, or `failed` without one."""
    return "failed" if status is None else status.name.lower()


async def _tell_closing(
    agent: AgentSession, reason: str, message: ControlMessage | None = None
) -> None:
    """Tell the agent why the relay ends (or drains) its session, if it has a control stream.

    Queues the message for the session's writer, which flushes it before it closes the
    connection; waits at most a second for room to queue it."""
    if agent.control is None:
        return
    with trio.move_on_after(1):
        async with agent.control_lock:
            if agent.control is None:
                return
            try:
                await agent.control.send_all(
                    encode_control(message or ControlMessage.closing(reason))
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _leave(agent: AgentSession, reason: str) -> None:
    """While the relay drains: tell an agent that can move to move (it lets the session go
    once it has one on another node), any other agent GoAway."""
    if agent.can_move and agent.control is not None:
        agent.moving = True
        await _go_away(agent, reason, ControlMessage.move(reason))
    else:
        await _go_away(agent, reason)


async def _go_away(agent: AgentSession, reason: str, message: ControlMessage | None = None) -> None:
    """No new streams on this session: the agent is told why, then GoAway. The control stream
    is closed after the message (the agent closes its end on EOF), so that a drain waiting
    for the session's streams does not wait for it. `message` replaces `closing`."""
    await _tell_closing(agent, reason, message)
    if (control := agent.control) is not None:
        agent.control = None
        await control.aclose()
    try:
        await agent.mux.go_away()
    except trio.BrokenResourceError:
        pass


async def _reset(stream: Any) -> None:
    """Abort a stream: RST to the agent, which drops its side of the target connection."""
    try:
        stream.reset()
    except trio.BrokenResourceError:
        pass
    await trio.aclose_forcefully(stream)


def _loggable_id(claimed: str) -> str:
    """A claimed bridge ID fit for the log: IDs are UUIDs; anything else might be a secret
    pasted in the wrong place, so only its length is shown."""
    try:
        return str(uuid.UUID(claimed))
    except ValueError:
        return f"<not a bridge ID: {len(claimed)} characters>"
