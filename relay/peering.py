# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Peer links between the relay nodes of a cluster: presence and peered opens.

One link per pair of nodes, dialed by the node whose name sorts lower (redialed with backoff
while the other is registered and live): TCP, a prelude naming the node dialed, TLS pinned
by the fingerprint the store registers for the listener, the peer handshake
(`relay.peer_handshake`), then a yamux session both sides open streams on. Each side opens
a control stream first and sends the bridges it holds on it (`relay.peer_messages`): on a
change (debounced) and every `PeerConfig.presence_interval`. A node's presence is dropped
as soon as its link closes.

The workers of ``bridge-relay serve --workers N`` are nodes of their own that share one
peer listener (bound by their parent): the worker that accepts a connection reads the
prelude without consuming it and hands the connection to the worker it names
(`relay.handover`), which reads it again and serves it. Workers of one host do not link
with each other: a connection for a bridge a sibling holds is handed to it instead.

Every other stream is a peered open: the caller node sends an `OpenRequest`, the holder
runs its own local open (limits, audit, the agent's allow-list answer) and replies; after OK
the stream carries the target's bytes, spliced on the holder. The holder never forwards an
open to a third node. The data path never waits on the store.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import socket
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.lowlevel

import mux
from bridge.ops.errors import connection_failure, failure_reason, os_reason
from bridge.protocol.addresses import format_host_port, parse_host_port
from bridge.protocol.connect import ConnectReply, ConnectStatus
from bridge.protocol.control import AdvertisedNode
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.splice import send_eagerly, splice
from bridge.transport.tls import FingerprintMismatch, client_ssl_context, open_tls_client
from bridge.transport.tls_stream import TLSStream
from relay.audit import Caller
from relay.certificates import PeerIdentity
from relay.config import PeerConfig
from relay.errors import (
    BridgeBusy,
    BridgeNotConnected,
    RelayShuttingDown,
    StoreError,
    TargetNotAllowed,
    TargetUnreachable,
    TunnelError,
)
from relay.peer_handshake import (
    MAX_PRELUDE,
    ChallengeParser,
    PeerHandshakeError,
    Prelude,
    PreludeParser,
    ProofParser,
    Verdict,
    VerdictParser,
    VerdictStatus,
    encode_challenge,
    encode_prelude,
    encode_proof,
    encode_verdict,
    fingerprint_digest,
    make_proof,
    verify_proof,
)
from relay.peer_messages import (
    HeldBridge,
    OpenOutcome,
    OpenReply,
    OpenReplyParser,
    OpenRequest,
    OpenRequestParser,
    PeerMessageError,
    PresenceReader,
    encode_open_reply,
    encode_open_request,
    presence_lines,
)
from relay.store import NodeRecord
from relay.worker_messages import Handover, host_of_worker

if TYPE_CHECKING:
    from relay.relay import Relay

log = logging.getLogger("relay.peering")

_READ_SIZE = 64 * 1024
_UNREACHABLE = {
    ConnectStatus.DNS_FAILURE,
    ConnectStatus.CONNECTION_REFUSED,
    ConnectStatus.TIMEOUT,
    ConnectStatus.UNREACHABLE,
}
#: An unknown certificate makes the listener read the store's node list again, at most this
#: often (so that strangers cannot make it query the store per connection).
_REFRESH_GAP = 0.5
#: Presence messages a peer's newer ones superseded before they were read: this many on
#: one link is more than a node sends that changes presence as often as it may (one per
#: `PeerConfig.presence_debounce`), and is logged (once per link).
_SUPERSEDED_WARNING = 100
#: A peered open beyond the caller node's share of a bridge is answered BUSY after this.
_OVER_SHARE_PAUSE = 1.0
#: While a connection's prelude is incomplete, how long to wait before looking again (it
#: is peeked, not read, so that it stays in the socket for the node it names).
_PEEK_GAP = 0.01


def _log(level: int, message: str, **fields: Any) -> None:
    log.log(level, message, extra={"fields": fields})


class PeerRefused(Exception):
    """A peer link was refused (by either side); the message says why, in one line."""


class _Garbage(Exception):
    """Not a peer handshake: dropped like garbage on the agent port."""


class _Retry(Exception):
    """A peered open failed before the holder answered, or the holder no longer holds the
    bridge: another holder may be tried."""


@attrs.define(eq=False)
class PeerLink:
    """A live link to another node: its mux session and the bridges that node holds."""

    node: str
    address: str
    session: Any = attrs.field(default=None, repr=False)
    control: Any = attrs.field(default=None, repr=False)
    held: dict[str, HeldBridge] = attrs.field(factory=dict, repr=False)
    names: dict[str, str] = attrs.field(factory=dict, repr=False)  # bridge name -> ID
    #: Peered opens sent through this link since its node's last presence, by bridge ID:
    #: counted with the streams that presence reported, for routing.
    opened: dict[str, int] = attrs.field(factory=dict, repr=False)
    #: This node's tunnels through this link (opening or open), by bridge ID: the holder
    #: has at least these open, whatever its last presence said.
    mine: dict[str, int] = attrs.field(factory=dict, repr=False)
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, repr=False)
    close_reason: str | None = None
    wake: trio.Event = attrs.field(factory=trio.Event, repr=False)
    #: The node said it drains: no opens go to it.
    draining: bool = False
    #: Its peered opens being served here (from reading the request to the tunnel's end),
    #: those waiting for the local open (the agent's answer), and the tunnels open: each
    #: bounded (`Peering`).
    serving: int = 0
    opening: int = 0
    tunnels: int = 0
    room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, repr=False)
    #: It was logged as opening more than it may (once per link).
    warned: bool = False
    #: Its first presence came.
    heard: bool = False

    def find(self, bridge: str) -> HeldBridge | None:
        """The bridge (an ID or name) if this link's node holds it."""
        held = self.held.get(bridge)
        if held is None and (bridge_id := self.names.get(bridge)) is not None:
            held = self.held.get(bridge_id)
        return held

    def load(self, bridge_id: str) -> int:
        held = self.held.get(bridge_id)
        reported = (held.streams if held else 0) + self.opened.get(bridge_id, 0)
        return max(reported, self.mine.get(bridge_id, 0))

    def count_mine(self, bridge_id: str, change: int) -> None:
        """Count one of this node's tunnels through the link more (1) or less (-1)."""
        if (count := self.mine.get(bridge_id, 0) + change) > 0:
            self.mine[bridge_id] = count
        else:
            self.mine.pop(bridge_id, None)

    def close(self, reason: str) -> None:
        """End the link; its node's presence is dropped at once."""
        if self.close_reason is None:
            self.close_reason = reason
        self.held, self.names = {}, {}
        self.cancel_scope.cancel()


class Peering:
    """The peer side of one relay node: its listener's handler, its dialers and its links.

    Made and run by `Relay.serve_peers`; `relay.connect` asks it for remote holders
    (`holders`) and opens through them (`open`). Nodes whose names start with `siblings`
    (the other workers of this host) are neither dialed nor accepted."""

    def __init__(
        self,
        relay: Relay,
        identity: PeerIdentity,
        advertise: str,
        config: PeerConfig,
        *,
        siblings: str | None = None,
    ) -> None:
        self.relay = relay
        self.identity = identity
        self.advertise = advertise
        self.config = config
        self.siblings = siblings
        self.links: dict[str, PeerLink] = {}
        self._links_changed = trio.Event()
        self._ssl = identity.ssl_context()
        self._digest = fingerprint_digest(identity.certificate)
        self._nodes: dict[str, NodeRecord] = {}  # live registered nodes with a peer address
        #: Nodes whose link ended after they said they drain (name -> instance): they left,
        #: and are not dialed again unless they register anew.
        self._left: dict[str, str] = {}
        self._dialers: set[str] = set()
        self._refreshed_at = -math.inf
        self._refresh_lock = trio.Lock()
        self._store_failing = False
        self._registered = False  # the store lists this node with its peer certificate
        self._nursery: trio.Nursery | None = None
        #: Tunnels opening or opened through links, not closed yet (`_Outbound`).
        self._outbound = 0
        self._outbound_lot = trio.lowlevel.ParkingLot()
        base = relay.config.mux
        options = {} if base is None else attrs.asdict(base, recurse=False)
        options.update(
            keepalive_interval=config.keepalive_interval,
            ping_timeout=config.ping_timeout,
            accept_backlog=config.accept_backlog,
        )
        self.mux_config = mux.Config(**options)
        # What one peer node may use of this node's bridges at once: half of a bridge's
        # streams and of its opens waiting for the agent, so that callers here (and other
        # nodes) always have the rest.
        self._max_tunnels = max(relay.config.max_streams_per_bridge // 2, 1)
        self._max_opening = max(relay.config.max_pending_opens // 2, 1)
        # Streams of one peer being served: those, and as many opens again reading their
        # request; beyond, new streams are reset unread.
        self._max_streams = self._max_tunnels + 2 * self._max_opening

    @property
    def node(self) -> str:
        return self.relay.node

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    # -- presence ------------------------------------------------------------------------

    def presence_changed(self) -> None:
        """The bridges this node holds changed: tell every linked node soon."""
        for link in self.links.values():
            link.wake.set()

    def holds(self, bridge: str) -> bool:
        """Whether a linked node that does not drain holds `bridge` (an ID or name): what
        `holders` would list something for, without ranking them."""
        return any(not link.draining and link.find(bridge) for link in self.links.values())

    def holders(self, bridge: str) -> list[tuple[PeerLink, HeldBridge]]:
        """The linked nodes holding `bridge` (an ID or name), fewest open streams first;
        none that drains."""
        found = [
            (link, held)
            for link in self.links.values()
            if not link.draining and (held := link.find(bridge))
        ]
        if len(found) > 1:  # one holder (the usual case) needs no ranking
            found.sort(key=lambda pair: pair[0].load(pair[1].id))
        return found

    def _held_here(self) -> list[HeldBridge]:
        """The bridges held here; none once the relay stops accepting (it opens no more)."""
        if self.relay.stopping:
            return []
        registry = self.relay.registry
        bridges: dict[str, HeldBridge] = {}
        for agent in registry:
            held = bridges.get(agent.bridge_id)
            streams = agent.open_streams() if agent.mux is not None else 0
            bridges[agent.bridge_id] = HeldBridge(
                agent.bridge_id, agent.bridge_name, streams + (held.streams if held else 0)
            )
        return list(bridges.values())

    def outbound_tunnels(self) -> int:
        """Tunnels this node opened (or opens) through other nodes that its callers have
        not closed."""
        return self._outbound

    async def wait_outbound_closed(self) -> None:
        """Return once `outbound_tunnels` is 0. Cancellation: nothing to undo."""
        while self._outbound:
            await self._outbound_lot.park()

    def _outbound_closed(self) -> None:
        self._outbound -= 1
        if not self._outbound:
            self._outbound_lot.unpark_all()

    def advertised_nodes(self) -> list[AdvertisedNode]:
        """The linked nodes that do not drain and register an agent address
        (``--agent-advertise``), by name, with that address (one that does not parse as
        HOST:PORT is left out), and for a worker of ``serve --workers`` its host-level node
        (from its name, ``NODE/worker-I.S``)."""
        nodes = []
        for name in sorted(self.links):
            record = self._nodes.get(name)
            if self.links[name].draining or record is None or not record.agent_advertise:
                continue
            try:
                host, port = parse_host_port(record.agent_advertise)
            except ValueError:
                continue
            nodes.append(AdvertisedNode(name, host, port, host_of_worker(name) or None))
        return nodes

    # -- the node list ------------------------------------------------------------------

    async def refresh(self, *, since: float | None = None) -> None:
        """Read the store's node list (the live nodes with a peer address); with `since`,
        not if a reading began after that time. While the store cannot be read, the copy in
        memory stays: one log line per state change."""
        async with self._refresh_lock:
            if since is not None and self._refreshed_at > since:
                return
            self._refreshed_at = trio.current_time()
            try:
                nodes = await self.relay._store.run(self.relay.store.list_nodes)
            except StoreError as exc:
                if not self._store_failing:
                    self._store_failing = True
                    _log(
                        logging.WARNING,
                        "Peer node list unavailable: working from memory",
                        reason=str(exc),
                    )
                return
            if self._store_failing:
                self._store_failing = False
                _log(logging.INFO, "Peer node list available again")
            timeout = self.relay.config.node_timeout
            # Others accept this node once the store has its certificate: dial after that.
            self._registered = any(
                n.name == self.node and n.peer_fingerprint == self.fingerprint for n in nodes
            )
            self._left = {n.name: n.instance for n in nodes if self._left.get(n.name) == n.instance}
            self._nodes = {
                n.name: n
                for n in nodes
                if n.peer_address
                and n.peer_fingerprint
                and n.name != self.node
                and not self.is_sibling(n.name)
                and n.name not in self._left
                and (n.age is None or n.age < timeout)
            }
            self._wake_waiters()
            self.relay._advertised_changed()

    def is_sibling(self, name: str) -> bool:
        """Whether node `name` is another worker of this host (never linked)."""
        return bool(self.siblings) and name.startswith(self.siblings or "")

    def _wake_waiters(self) -> None:
        self._links_changed.set()
        self._links_changed = trio.Event()

    async def wait_linked(self) -> None:
        """Return once this node is registered, has a link to every other live node of the
        store's list and had the first presence of each (a worker of ``serve --workers``
        waits for this, bounded, before it serves: a replacement then reaches every bridge
        its predecessor did). Cancellable; bound it with a deadline (a node may be listed
        that does not answer)."""
        while not self._registered or any(
            name not in self.links or not self.links[name].heard for name in self._nodes
        ):
            await self._links_changed.wait()

    async def _node_with(self, name: str, fingerprint: str) -> NodeRecord | None:
        """The live node `name` if its registered fingerprint is `fingerprint`, reading the
        store again when it is not known yet: once a reading began after this call (at
        most one per `_REFRESH_GAP`, waiting for it: a node that just registered dials at
        once)."""
        record = self._nodes.get(name)
        if record is None or record.peer_fingerprint != fingerprint:
            asked = trio.current_time()
            await trio.sleep_until(self._refreshed_at + _REFRESH_GAP)
            await self.refresh(since=asked)
            record = self._nodes.get(name)
        if record is None or record.peer_fingerprint != fingerprint:
            return None
        return record

    # -- running -------------------------------------------------------------------------

    async def run(
        self, listeners: list[trio.SocketListener], *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept peer links on `listeners` and dial the nodes this one should, until
        cancelled; cancelling ends every link."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.refresh()
            await nursery.start(
                self.relay.serve_listeners, self._handle, listeners, self.relay._gate
            )
            nursery.start_soon(self._dial_manager)
            task_status.started(listeners)

    async def _dial_manager(self) -> None:
        while True:
            for name in sorted(self._nodes) if self._registered else ():
                if self.node < name and name not in self._dialers:
                    self._dialers.add(name)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._dial_loop, name)
            interval = self.config.refresh_interval
            await trio.sleep(interval if self._registered else min(0.2, interval))
            await self.refresh()

    async def _dial_loop(self, name: str) -> None:
        """Keep a link to `name` up while it is registered and live (or linked)."""
        delay = self.config.redial_min
        failure: str | None = None
        try:
            while (record := self._nodes.get(name)) is not None:
                try:
                    up = await self._dial(record)
                except (PeerRefused, PeerHandshakeError, FingerprintMismatch) as exc:
                    up, reason = False, str(exc)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    up, reason = False, failure_reason(exc)
                except ValueError as exc:  # an address or fingerprint in the store
                    up, reason = False, f"invalid node record: {exc}"
                except Exception as exc:
                    up, reason = False, ""
                    if connection_failure(exc) is None:  # else: a link broke, and said so
                        log.exception(
                            "Unexpected error on a peer link", extra={"fields": {"node": name}}
                        )
                else:
                    reason = ""
                if up:
                    delay, failure = self.config.redial_min, None
                elif reason and reason != failure:
                    failure = reason  # one line per new reason, not one per attempt
                    _log(
                        logging.WARNING,
                        "Cannot reach peer",
                        node=name,
                        address=record.peer_address,
                        reason=reason,
                    )
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.config.redial_max)
        finally:
            self._dialers.discard(name)

    async def _dial(self, record: NodeRecord) -> bool:
        """Dial `record`'s node and run the link until it ends; False if it never came up.
        Raises PeerRefused, PeerHandshakeError, FingerprintMismatch, OSError or
        trio.BrokenResourceError when it could not link."""
        assert record.peer_address and record.peer_fingerprint
        host, port = parse_host_port(record.peer_address)
        context = client_ssl_context(fingerprint=record.peer_fingerprint)
        with trio.move_on_after(self.relay.config.handshake_timeout) as deadline:
            tcp = await trio.open_tcp_stream(host, port)
            try:
                await tcp.send_all(encode_prelude(Prelude(record.name)))
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
            tls = await open_tls_client(tcp, host, context)
            try:
                challenge = await _read_message(tls, ChallengeParser())
                pinned = fingerprint_digest(tls.getpeercert(binary_form=True) or b"")
                proof = make_proof(
                    self.node, self.identity.certificate, self.identity.sign, challenge, pinned
                )
                await tls.send_all(encode_proof(proof))
                verdict_parser = VerdictParser()
                verdict = await _read_message(tls, verdict_parser)
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
        if deadline.cancelled_caught:
            raise PeerRefused("peer handshake timed out")
        if verdict.status != VerdictStatus.OK:
            await trio.aclose_forcefully(tls)
            raise PeerRefused(f"refused by {record.name}: {verdict.message}")
        leftover = verdict_parser.leftover
        transport = PrefixedStream(tls, leftover) if leftover else tls
        await self._run_link(transport, record.name, record.peer_address, client=True)
        return True

    async def serve_handed_over(self, tcp: trio.SocketStream) -> None:
        """A peer connection another worker of this host accepted and handed to this one
        (its prelude names this node): served as if accepted here, through this worker's
        gate. Never raises."""
        arrival = self.relay._gate(tcp)
        if arrival is None:
            await trio.aclose_forcefully(tcp)
            return
        await self._handle(tcp, arrival, handed=True)

    async def _handle(self, tcp: trio.SocketStream, arrival: Any, *, handed: bool = False) -> None:
        """One connection to the peer listener: through the same gate, deadline and drop
        log as the agent port; never raises. A connection whose prelude names another
        worker of this host is handed to it (unless it was handed here)."""
        relay = self.relay
        ticket, peer = arrival.ticket, arrival.peer
        transport: TLSStream | None = None
        try:
            with trio.CancelScope(
                deadline=trio.current_time() + relay.config.handshake_timeout
            ) as handshake:
                ticket.on_eviction(handshake.cancel)
                if (wanted := await self._take_prelude(tcp, handed)) is None:
                    return  # handed to the worker it names
                transport = TLSStream.wrap(tcp, self._ssl, server_side=True)
                await transport.do_handshake()
                record = await self._check_dialer(transport, peer, ticket.source, wanted)
            if handshake.cancelled_caught:
                reason = "handshake timed out"
                if ticket.evicted:
                    reason = "closed for a connection from another address"
                relay._dropped(peer, ticket, reason)
                return
            if record is None or transport is None:
                return
            ticket.release()
            await self._run_link(transport, record.name, peer, client=False)
        except _Garbage as exc:
            relay._dropped(peer, ticket, str(exc))
        except Exception as exc:
            if (broken := connection_failure(exc)) is None:
                log.exception("Unexpected error on a peer link", extra={"fields": {"peer": peer}})
            elif not ticket.released:
                relay._dropped(peer, ticket, failure_reason(broken))
        finally:
            ticket.release()
            await trio.aclose_forcefully(transport if transport is not None else tcp)

    async def _take_prelude(self, tcp: trio.SocketStream, handed: bool) -> str | None:
        """Read the prelude: the name of the node it wants, once consumed, to be served
        here (the handshake refuses a name not this node's); None once the connection was
        handed to the worker of this host it names. Raises _Garbage for a malformed one."""
        try:
            prelude, size = await _peek_prelude(tcp)
        except PeerHandshakeError as exc:
            raise _Garbage(f"malformed peer handshake: {exc}") from None
        except trio.BrokenResourceError:
            raise _Garbage("closed during the peer handshake") from None
        handovers = self.relay.handover
        if (
            prelude.node != self.node
            and not handed
            and handovers is not None
            and self.is_sibling(prelude.node)
            and await handovers.offer(tcp, Handover(prelude.node, "peer"))
        ):
            return None
        if len(await tcp.socket.recv(size)) != size:  # peeked: it is all there
            raise _Garbage("closed during the peer handshake")
        return prelude.node

    async def _check_dialer(
        self, transport: TLSStream, peer: str, source: str, wanted: str
    ) -> NodeRecord | None:
        """The challenge, the dialer's proof and the verdict: the dialer's live node record,
        or None once refused (logged and told): its proof does not verify, it is not a live
        registered node, or it dialed another node (`wanted`, from its prelude). Raises
        _Garbage for bytes that are not a peer handshake."""
        nonce = secrets.token_bytes(32)
        await transport.send_all(encode_challenge(nonce))
        parser = ProofParser()
        try:
            proof = await _read_message(transport, parser)
        except PeerHandshakeError as exc:
            raise _Garbage(f"malformed peer handshake: {exc}") from None
        except trio.BrokenResourceError:
            raise _Garbage("closed during the peer handshake") from None
        if parser.leftover:
            raise _Garbage("malformed peer handshake: data before the verdict")
        try:
            fingerprint = verify_proof(proof, nonce, self._digest)
        except PeerHandshakeError as exc:
            await self._refuse(transport, peer, source, str(exc))
            return None
        if proof.name == self.node:
            await self._refuse(transport, peer, source, f"node name {proof.name} is this node's")
            return None
        record = await self._node_with(proof.name, fingerprint)
        if record is None:
            await self._refuse(
                transport,
                peer,
                source,
                f"certificate {fingerprint} is not the one registered for a live node {proof.name}",
            )
            return None
        if wanted != self.node:
            await self._refuse(
                transport, peer, source, f"node {wanted} is not here (this is node {self.node})"
            )
            return None
        await transport.send_all(encode_verdict(Verdict(VerdictStatus.OK)))
        return record

    async def _refuse(self, transport: TLSStream, peer: str, source: str, reason: str) -> None:
        """Tell the dialer why it is refused; logged within the budget of connections
        dropped before authentication (the rest are summed up with them)."""
        if self.relay._drops.note(f"peer link refused: {reason}", source):
            _log(logging.WARNING, "Peer link refused", peer=peer, reason=reason)
        try:
            await transport.send_all(encode_verdict(Verdict(VerdictStatus.REFUSED, reason)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- a link ------------------------------------------------------------------------

    async def _run_link(
        self, transport: trio.abc.Stream, node: str, address: str, *, client: bool
    ) -> None:
        """Run the mux session of a link with `node` until it ends (the link is logged up
        and down); a link already up with that node is replaced."""
        link = PeerLink(node, address)
        session = None
        try:
            async with mux.open_session(
                transport, client=client, config=self.mux_config
            ) as session:
                link.session = session
                link.control = await session.open_stream()
                if (old := self.links.get(node)) is not None:
                    old.close("replaced by a new link")
                self.links[node] = link
                self._wake_waiters()
                _log(logging.INFO, "Peer link up", node=node, address=address)
                self.relay._node_changed()
                with link.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_presence, link)
                        try:
                            control = await session.accept_stream()  # the peer's, first
                        except mux.SessionClosed as exc:
                            link.close(str(exc))
                        else:
                            nursery.start_soon(self._read_presence, link, control)
                            await self._accept_opens(link, session, nursery)
                        link.close_reason = link.close_reason or str(session.close_reason)
                        nursery.cancel_scope.cancel()
        except mux.SessionClosed as exc:
            link.close_reason = link.close_reason or str(exc)
        finally:
            if self.links.get(node) is link:
                del self.links[node]
                self.relay._node_changed()
                if link.draining and (record := self._nodes.pop(node, None)) is not None:
                    self._left[node] = record.instance
            if link.session is not None:
                reason = link.close_reason
                if reason is None and session is not None and session.close_reason is not None:
                    reason = str(session.close_reason)
                _log(logging.INFO, "Peer link down", node=node, reason=reason or "closed")

    async def _send_presence(self, link: PeerLink) -> None:
        """Send this node's presence on `link`: on a change (debounced) and every
        `presence_interval`. A list goes in parts (`presence_lines`), each encoded when the
        previous one is sent, so that a large one never holds up the other work for long."""
        interval, debounce = self.config.presence_interval, self.config.presence_debounce
        try:
            while True:
                link.wake = trio.Event()
                held = self._held_here()
                for line in presence_lines(held, draining=self.relay.stopping):
                    await link.control.send_all(line)
                with trio.move_on_after(interval):
                    await link.wake.wait()
                    await trio.sleep(debounce)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            link.close(link.close_reason or "control stream closed")

    async def _read_presence(self, link: PeerLink, control: Any) -> None:
        """Read `link`'s presence: one part at a time, each followed by a pause of 4 times
        what it took to decode (so one peer's presence costs at most a fifth of a core, and
        flow control holds a faster sender back), and a whole list by at least
        `presence_debounce`. A list takes effect only once whole; of the lists one read
        completes, only the latest is decoded. A peer that sends large lists, or many more
        than it should, is told of in one log line."""
        reader = PresenceReader()
        warned = False
        debounce = self.config.presence_debounce
        cost = 0.0  # what decoding the list being assembled took so far
        try:
            while data := await control.receive_some(_READ_SIZE):
                for line in reader.lines(data):
                    began = trio.current_time()
                    presence = reader.decode(line)
                    spent = trio.current_time() - began
                    cost += spent
                    if presence is None:
                        await trio.sleep(4 * spent)
                        continue
                    if presence.draining and not link.draining:
                        _log(logging.INFO, "Peer draining: routing around it", node=link.node)
                    if presence.draining != link.draining:
                        link.draining = presence.draining
                        self.relay._advertised_changed()
                    link.held, link.names = presence.held, presence.names
                    link.opened = {}
                    if not link.heard:
                        link.heard = True
                        self._wake_waiters()
                    often = reader.superseded >= _SUPERSEDED_WARNING
                    if (often or 4 * cost > debounce) and not warned:
                        warned = True  # costly (large) presence, or more than a node sends
                        _log(
                            logging.WARNING if often else logging.INFO,
                            "Peer presence throttled: reading only its latest list, then pausing",
                            node=link.node,
                            pause=f"{4 * cost:.3f} s",
                            bridges=len(presence.held),
                            superseded=reader.superseded,
                        )
                    cost = 0.0
                    await trio.sleep(max(debounce, 4 * spent))
        except PeerMessageError as exc:
            link.close(f"invalid presence: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        ended = link.session.close_reason if link.session is not None else None
        link.close(link.close_reason or (str(ended) if ended else "control stream closed"))

    # -- peered opens: the holder's side ----------------------------------------------

    def _too_many(self, link: PeerLink, what: str) -> None:
        """`link`'s node opens more than a peer may: one log line per link."""
        if not link.warned:
            link.warned = True
            _log(
                logging.WARNING,
                "Peer opens too many streams: refusing those beyond the limit",
                node=link.node,
                streams=what,
                limit=f"{self._max_tunnels} tunnels, {self._max_opening} opens waiting for the "
                f"agent, {self._max_streams} streams",
            )

    async def _accept_opens(
        self, link: PeerLink, session: mux.Session, nursery: trio.Nursery
    ) -> None:
        """Serve each stream the peer opens until the session ends; while the peer has as
        many served at once as it may, no more are accepted (the session's accept backlog
        holds the next ones and refuses the rest). The ACK of a stream rides on the reply
        (the peer sent its request with the open, and the reply follows within the open's
        deadlines): one frame fewer per peered open."""
        while True:
            while link.serving >= self._max_streams:
                self._too_many(link, f"{link.serving} open")
                await link.room.park()
            try:
                stream = await session.accept_stream(defer_ack=True)
            except mux.SessionClosed:
                return
            link.serving += 1
            nursery.start_soon(self._serve_open, link, stream)

    async def _serve_open(self, link: PeerLink, stream: Any) -> None:
        """One peered open from `link`'s node (counted in ``link.serving`` by the caller):
        the local open, the reply, then the splice."""
        tunnel = None
        try:
            parser = OpenRequestParser()
            # The request rides on the stream's SYN frame: it is read as it is buffered,
            # with no deadline and no checkpoint (the open's own come next); only a request
            # split over frames is waited for.
            if _read_buffered(stream, parser) is None:
                with trio.move_on_after(self.relay.config.handshake_timeout):
                    await _read_message(stream, parser)
            if (request := parser.message) is None:
                _reset(stream)
                return
            tunnel, reply = await self._open_local(link, request)
            if tunnel is not None:
                link.tunnels += 1
            await send_eagerly(stream, encode_open_reply(reply))
            if tunnel is None:
                await stream.aclose()
                return
            if parser.leftover:
                await tunnel.send_all(parser.leftover)
            _, _, clean = await splice(stream, tunnel)
            if not clean:
                _reset(stream)
                _reset(tunnel)
        except PeerMessageError as exc:
            _log(logging.WARNING, "Invalid peered open", node=link.node, reason=str(exc))
            _reset(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            _reset(stream)
            _reset(tunnel)
        except trio.Cancelled:
            _reset(stream)
            _reset(tunnel)
            raise
        except Exception:
            log.exception(
                "Unexpected error on a peered open", extra={"fields": {"node": link.node}}
            )
            _reset(stream)
            _reset(tunnel)
        finally:
            link.serving -= 1
            link.room.unpark_all()
            if tunnel is not None:
                link.tunnels -= 1
            # Closing a mux stream (and its metering) never blocks: the tunnel's close is
            # done before its checkpoint, so a cancellation there leaves both closed; the
            # peer's stream is closed without a checkpoint of its own (`mux.Stream.close`).
            try:
                if tunnel is not None:
                    await tunnel.aclose()
            finally:
                stream.close()

    async def _open_local(
        self, link: PeerLink, request: OpenRequest
    ) -> tuple[trio.abc.HalfCloseableStream | None, OpenReply]:
        caller = _caller(request.caller, link.node)
        if not self.relay.registry.sessions(request.bridge):
            return None, OpenReply(OpenOutcome.NOT_CONNECTED, message="not held by this node")
        # Beyond its share the node is refused, unless the bridge is at its own limit: that
        # refusal (audited) is the local open's.
        full = self.relay.registry.open_streams(request.bridge)
        # (Its opens on their way become tunnels: they count as such.)
        if link.opening >= self._max_opening or (
            link.tunnels + link.opening >= self._max_tunnels
            and full < self.relay.config.max_streams_per_bridge
        ):
            self._too_many(link, f"{link.tunnels} tunnels, {link.opening} opens waiting")
            # Answered after a pause: a node that keeps asking beyond its share is held to
            # `_max_streams` refusals per pause, not as many as it can send.
            await trio.sleep(_OVER_SHARE_PAUSE)
            message = (
                f"node {self.node}: node {link.node} has all it may of bridge {request.bridge}"
            )
            return None, OpenReply(OpenOutcome.BUSY, message=message)
        link.opening += 1
        try:
            tunnel, reply = await self.relay._open(
                request.bridge, request.host, request.port, caller, remote=False
            )
        except BridgeNotConnected as exc:
            return None, OpenReply(OpenOutcome.NOT_CONNECTED, message=str(exc))
        except RelayShuttingDown as exc:
            return None, OpenReply(OpenOutcome.SHUTTING_DOWN, message=str(exc))
        except BridgeBusy as exc:
            return None, OpenReply(OpenOutcome.BUSY, message=str(exc))
        except TunnelError as exc:
            if exc.status is None:
                return None, OpenReply(OpenOutcome.FAILED, message=str(exc))
            return None, OpenReply(OpenOutcome.REFUSED, exc.status, str(exc))
        except ValueError as exc:
            return None, OpenReply(OpenOutcome.FAILED, message=str(exc))
        finally:
            link.opening -= 1
        return tunnel, OpenReply(OpenOutcome.OK, ConnectStatus.OK, reply.message)

    # -- peered opens: the caller's side ----------------------------------------------

    async def open(
        self, bridge: str, host: str, port: int, caller: Caller
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        """A stream to host:port through a node holding `bridge`, fewest open streams first;
        a holder that turns out not to hold it (or whose link breaks before it answers) is
        skipped. Raises what `Relay.connect` raises: BridgeNotConnected when no linked node
        holds it. Cancelling it abandons the attempt (the holder's side is reset)."""
        tried: set[PeerLink] = set()
        fields = {k: v for k, v in caller.to_dict().items() if v is not None}
        while candidates := [pair for pair in self.holders(bridge) if pair[0] not in tried]:
            link, held = candidates[0]
            tried.add(link)
            try:
                return await self._open_on(link, held, OpenRequest(held.id, host, port, fields))
            except _Retry as retry:
                _log(
                    logging.INFO,
                    "Retrying a tunnel on another node",
                    bridge=held.name,
                    target=format_host_port(host, port),
                    node=link.node,
                    reason=str(retry),
                )
        raise BridgeNotConnected(bridge)

    async def _open_on(
        self, link: PeerLink, held: HeldBridge, request: OpenRequest
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        link.opened[held.id] = link.opened.get(held.id, 0) + 1
        link.count_mine(held.id, 1)
        self._outbound += 1  # a drain that begins meanwhile waits for it
        try:
            return await self._open_through(link, held, request)
        except BaseException:
            link.count_mine(held.id, -1)
            self._outbound_closed()
            raise

    async def _open_through(
        self, link: PeerLink, held: HeldBridge, request: OpenRequest
    ) -> tuple[trio.abc.HalfCloseableStream, ConnectReply]:
        # The holder may wait for a slot and then for the agent, each up to its timeout.
        # One deadline for the open, the request and the reply.
        wait = 2 * self.relay.config.connect_timeout + 1
        stream: mux.Stream | None = None
        reply: OpenReply | None = None
        parser = OpenReplyParser()
        try:
            with trio.move_on_after(wait):
                stream = await link.session.open_stream()
                await send_eagerly(stream, encode_open_request(request))
                reply = await _read_message(stream, parser)
        except (mux.StreamReset, mux.SessionClosed, trio.BrokenResourceError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise _Retry(str(exc) or type(exc).__name__) from None
        except PeerMessageError as exc:
            assert stream is not None  # the reply is read from it
            _reset(stream)
            await trio.aclose_forcefully(stream)
            raise TunnelError(f"Node {link.node} sent an invalid reply: {exc}") from None
        except BaseException:
            if stream is not None:
                _reset(stream)
                await trio.aclose_forcefully(stream)
            raise
        if stream is None:
            raise TargetUnreachable(
                f"Node {link.node} took no new stream within {wait:g} s",
                status=ConnectStatus.TIMEOUT,
            )
        if reply is None:
            _reset(stream)
            await trio.aclose_forcefully(stream)
            raise TargetUnreachable(
                f"No answer from node {link.node} about {request.host}:{request.port} within "
                f"{wait:g} s",
                status=ConnectStatus.TIMEOUT,
            )
        if reply.outcome == OpenOutcome.OK:
            return _Outbound(stream, parser.leftover, self, link, held.id), ConnectReply(
                ConnectStatus.OK, reply.message
            )
        await trio.aclose_forcefully(stream)
        error = _error(reply)
        if error is None:
            raise _Retry(reply.message)
        error.audited_elsewhere = True  # type: ignore[attr-defined]  # the holder audited it
        raise error


class _Outbound(PrefixedStream):
    """A tunnel opened through a peer link: counted in `Peering.outbound_tunnels` (which a
    drain waits for) until closed."""

    def __init__(
        self, stream: Any, prefix: bytes, peering: Peering, link: PeerLink, bridge_id: str
    ) -> None:
        super().__init__(stream, prefix)
        self._peering: Peering | None = peering
        self._link, self._bridge_id = link, bridge_id  # counted by `Peering._open_on`

    async def aclose(self) -> None:
        """Stop counting the tunnel (once), then close it as `PrefixedStream` does."""
        if (peering := self._peering) is not None:
            self._peering = None
            peering._outbound_closed()
            self._link.count_mine(self._bridge_id, -1)
        await super().aclose()


def _error(reply: OpenReply) -> Exception | None:
    """The exception a local open would have raised for the holder's `reply` (None: try
    another holder)."""
    if reply.outcome in (OpenOutcome.NOT_CONNECTED, OpenOutcome.SHUTTING_DOWN):
        return None
    if reply.outcome == OpenOutcome.BUSY:
        return BridgeBusy(reply.message)
    if reply.outcome == OpenOutcome.REFUSED:
        if reply.status == ConnectStatus.NOT_ALLOWED:
            return TargetNotAllowed(reply.message, status=reply.status)
        if reply.status in _UNREACHABLE:
            return TargetUnreachable(reply.message, status=reply.status)
        return TunnelError(reply.message, status=reply.status)
    return TunnelError(reply.message)


def _caller(fields: dict[str, Any], node: str) -> Caller:
    """The caller of a peered open as the caller node described it, marked as coming
    through that node."""

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value[:256] if isinstance(value, str) else None

    label = text("label")
    via = f"via node {node}"
    return Caller(
        text("kind") or "embedded",
        f"{label} ({via})" if label else via,
        text("address"),
        text("user"),
    )


async def _peek_prelude(tcp: trio.SocketStream) -> tuple[Prelude, int]:
    """The `Prelude` at the start of `tcp` and its size, left in the socket (peeked).
    Raises PeerHandshakeError for bytes that are not one, trio.BrokenResourceError when the
    connection ends first. Cancellable (bound it: a dialer may send it slowly)."""
    while True:
        try:
            data = await tcp.socket.recv(MAX_PRELUDE, socket.MSG_PEEK)
        except OSError as exc:
            raise trio.BrokenResourceError(os_reason(exc)) from None
        if not data:
            raise trio.BrokenResourceError("closed before the prelude ended")
        parser = PreludeParser()
        if (prelude := parser.feed(data)) is not None:
            return prelude, len(data) - len(parser.leftover)
        await trio.sleep(_PEEK_GAP)  # the rest has not arrived yet


def _read_buffered(stream: mux.Stream, parser: Any) -> Any:
    """Feed `parser` what `stream` has buffered (`mux.Stream.receive_nowait`): its message,
    or None when that is not all there yet. Not a checkpoint; raises what the stream raises
    (but not `trio.WouldBlock`)."""
    try:
        return parser.feed(stream.receive_nowait(_READ_SIZE))
    except trio.WouldBlock:
        return None


async def _read_message(stream: Any, parser: Any) -> Any:
    """Feed `parser` from `stream` until it returns its message; `trio.BrokenResourceError`
    if the stream ends first."""
    while (message := parser.feed(data := await stream.receive_some(_READ_SIZE))) is None:
        if not data:
            raise trio.BrokenResourceError("closed before the message ended")
    return message


def _reset(stream: Any) -> None:
    while stream is not None and not hasattr(stream, "reset"):
        stream = getattr(stream, "transport_stream", None)
    if stream is not None:
        try:
            stream.reset()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
