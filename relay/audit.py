# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The audit trail: one event per tunneled connection when it opens (or fails to), one every
`AuditConfig.interval` while it stays open, one when it closes; and one per change made to a
bridge (created, deleted, secret rotated).

Events are frozen values (`TunnelEvent`, `AdminEvent`) that never hold a secret or a byte of
payload. `AuditTrail` takes them from the data path without waiting: they go into a bounded
queue, and one task (`AuditTrail.run`) hands them to the sinks (`AuditSink`: the JSON-lines
file of `relay.audit_log`, the hooks of embedding code). When the queue is full an event is
dropped, counted in `trio_bridge_audit_events_dropped_total` and logged once per
`log_interval`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from bridge.ops.errors import os_reason
from bridge.ops.metrics import Metrics
from bridge.validators import positive_number
from relay.errors import (
    BridgeBusy,
    BridgeNotConnected,
    RelayShuttingDown,
    TargetNotAllowed,
    TargetUnreachable,
    UnknownBridge,
)
from relay.limits import Repeats

if TYPE_CHECKING:
    from bridge.ops.metrics import MeteredStream

log = logging.getLogger("relay.audit")

#: Outcomes of a tunnel event. An attempt that fails gets one `tunnel.open` event with the
#: failure; a tunnel that opened gets `tunnel.close` with `ok`, `reset` (a side aborted),
#: `cut` (its agent's session ended under it, or the relay or the caller cut it short) or
#: `revoked` (its bridge was deleted or rotated).
OUTCOMES = (
    "ok",
    "refused",
    "unreachable",
    "timed_out",
    "busy",
    "not_connected",
    "shutting_down",
    "failed",
    "cancelled",
    "reset",
    "cut",
    "revoked",
)
TUNNEL_EVENTS = ("tunnel.open", "tunnel.progress", "tunnel.close")
ADMIN_EVENTS = ("bridge.created", "bridge.deleted", "bridge.rotated")


def iso_time(timestamp: float) -> str:
    """UTC, ISO 8601 with microseconds and a Z: how event times are written."""
    seconds = int(timestamp)
    micros = round((timestamp - seconds) * 1e6)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


@attrs.frozen
class Caller:
    """Who asked for a tunnel. `kind` is `forward` (label: the forward as given to
    `--forward`, address: the client's), `socks` (user: the SOCKS username, if any),
    `test` (`bridge-relay test`) or `embedded` (label: whatever the embedding code passed
    to `Relay.connect`)."""

    kind: str
    label: str | None = None
    address: str | None = None
    user: str | None = None

    @classmethod
    def of(cls, caller: Caller | str | None) -> Caller:
        """`caller` as given to `Relay.connect`: a Caller, a label, or None."""
        if isinstance(caller, Caller):
            return caller
        return cls("embedded", None if caller is None else str(caller))

    def to_dict(self) -> dict[str, str | None]:
        """The caller as a JSON object for the audit log."""
        return {"kind": self.kind, "label": self.label, "address": self.address, "user": self.user}

    def describe(self) -> str:
        """One short phrase for a table: `forward e2e=db:5432@127.0.0.1:15432 from ...`."""
        words = [self.kind]
        if self.label:
            words.append(self.label)
        if self.user:
            words.append(f"user {self.user}")
        if self.address:
            words.append(f"from {self.address}")
        return " ".join(words)


@attrs.frozen(kw_only=True)
class TunnelEvent:
    """One tunneled connection at a moment of its life.

    event: `tunnel.open`, `tunnel.progress` or `tunnel.close`; tunnel: an ID shared by the
    events of one connection; node: the relay node the caller reached; agent_node: the node
    holding the agent's session (None if no agent was reached); agent: the agent's address;
    outcome: one of `OUTCOMES`; reason: why, for every outcome but ok (the agent's own words
    when it refused); duration: seconds since the tunnel was asked for; bytes_up: bytes sent
    to the target so far, bytes_down: bytes received from it.
    """

    event: str
    time: float
    tunnel: str
    bridge: str
    bridge_id: str | None
    node: str
    agent_node: str | None
    agent: str | None
    caller: Caller
    target: str
    outcome: str
    reason: str | None = None
    duration: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The event as written to the audit log (time as ISO 8601 UTC)."""
        return {
            "time": iso_time(self.time),
            "event": self.event,
            "tunnel": self.tunnel,
            "bridge": self.bridge,
            "bridge_id": self.bridge_id,
            "node": self.node,
            "agent_node": self.agent_node,
            "agent": self.agent,
            "caller": self.caller.to_dict(),
            "target": self.target,
            "outcome": self.outcome,
            "reason": self.reason,
            "duration": round(self.duration, 6),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@attrs.frozen(kw_only=True)
class AdminEvent:
    """A change to a bridge: event is `bridge.created`, `bridge.deleted` or `bridge.rotated`;
    command: the command that made it (`bridge-relay bridges rotate`); user: the system user
    who ran it; node: the host it ran on."""

    event: str
    time: float
    bridge: str
    bridge_id: str
    command: str
    user: str | None = None
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object for the audit log (ISO 8601 time)."""
        return {
            "time": iso_time(self.time),
            "event": self.event,
            "bridge": self.bridge,
            "bridge_id": self.bridge_id,
            "command": self.command,
            "user": self.user,
            "node": self.node,
        }


AuditEvent = TunnelEvent | AdminEvent
AuditHook = Callable[[AuditEvent], object]


class AuditSink(Protocol):
    """Where `AuditTrail.run` delivers events, in order, in batches.

    `write` may take its time (only the audit task waits for it) and raise OSError (the
    batch is counted as dropped and the failure logged); `reopen` starts afresh after the
    sink's file was rotated away; `close` releases what the sink holds."""

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Deliver `events`, in order. May raise OSError (the batch is then dropped)."""

    def reopen(self) -> None:
        """Start afresh after the sink's file was rotated away."""

    def close(self) -> None:
        """Release what the sink holds; nothing is written afterwards."""


class HookSink:
    """Calls `hook(event)` for each event, in the audit task; an exception it raises is
    logged (once per interval) and the next events are still delivered."""

    def __init__(self, hook: AuditHook) -> None:
        self.hook = hook

    def __repr__(self) -> str:
        return f"<HookSink {self.hook!r}>"

    async def write(self, events: Sequence[AuditEvent]) -> None:
        """Call the hook for each event, in order; what the hook raises propagates."""
        for event in events:
            self.hook(event)

    def reopen(self) -> None:
        """Nothing to reopen."""

    def close(self) -> None:
        """Nothing to release."""


@attrs.frozen(kw_only=True)
class AuditConfig:
    """interval: seconds between the progress events of a tunnel that stays open.
    queue_size: events waiting for the audit task; beyond, new ones are dropped (counted).
    batch_size: events handed to the sinks at once, at most.
    batch_delay: seconds the audit task lets events gather before it hands them on (fewer
        wakeups and writes when tunnels open and close at a high rate).
    log_interval: a dropped event or a failing sink is logged once per this.
    flush_timeout: on shutdown, how long the sinks get for the events still queued."""

    interval: float = attrs.field(default=60.0, validator=positive_number)
    queue_size: int = attrs.field(default=10_000, validator=attrs.validators.gt(0))
    batch_size: int = attrs.field(default=512, validator=attrs.validators.gt(0))
    batch_delay: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    log_interval: float = attrs.field(default=10.0, validator=positive_number)
    flush_timeout: float = attrs.field(default=5.0, validator=positive_number)


@attrs.define(eq=False)
class OpenTunnel:
    """What the audit trail keeps of a tunnel while it is open."""

    tunnel: str
    bridge: str
    bridge_id: str
    agent: Any  # the AgentSession (relay.registry) it runs in
    caller: Caller
    target: str
    stream: MeteredStream
    started: float  # time.monotonic() when asked for
    due: float  # time.monotonic() of its next progress event


class AuditTrail:
    """Takes audit events from the relay and delivers them to sinks, never making the caller
    wait. `enabled` is false until a sink or a hook is added: then no event is made at all.

    `metrics` (a `Metrics` registry) gets `trio_bridge_audit_events_dropped_total{reason}`:
    `queue_full` or `sink_failed`.
    """

    def __init__(
        self,
        metrics: Metrics,
        config: AuditConfig | None = None,
        *,
        node: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config = config or AuditConfig()
        self.node = node
        self._clock = clock
        self._sinks: list[AuditSink] = []
        self._send, self._receive = trio.open_memory_channel[AuditEvent](config.queue_size)
        self._open: dict[MeteredStream, OpenTunnel] = {}  # in order of their next progress
        self._repeats: Repeats[str | tuple[str, int]] = Repeats(config.log_interval, clock=clock)
        self._running = False
        #: Set when the relay stops accepting: tunnels cut from then on were cut by it.
        self.stopping = False
        #: Set when the relay's drain is over (timed out, or a second signal): every tunnel
        #: still open is cut by the stop, however its side closes it.
        self.cutting = False
        self._held: list[AuditEvent] = []  # taken from the queue, not yet delivered
        self.dropped = metrics.counter(
            "trio_bridge_audit_events_dropped_total",
            "Audit events lost, by reason: queue_full (the audit task fell behind) or "
            "sink_failed (the audit log could not be written).",
            ["reason"],
        )
        self.dropped.labels(reason="queue_full")
        self.dropped.labels(reason="sink_failed")

    def __repr__(self) -> str:
        return f"<AuditTrail sinks={len(self._sinks)} open={len(self._open)}>"

    @property
    def enabled(self) -> bool:
        """Whether any sink (a log file or a hook) receives events."""
        return bool(self._sinks)

    @property
    def open_tunnels(self) -> int:
        """Tunnels opened and not yet closed, as the trail counts them."""
        return len(self._open)

    def add_sink(self, sink: AuditSink) -> None:
        """Deliver every event from now on to `sink` as well."""
        self._sinks.append(sink)

    def add_hook(self, hook: AuditHook) -> None:
        """Call `hook(event)` for every event from now on, in the audit task (see HookSink)."""
        self.add_sink(HookSink(hook))

    def reopen(self) -> None:
        """Reopen every sink's file (after a rotation that renamed it). Never raises: a sink
        that cannot reopen keeps its current file and says why in the log."""
        for sink in self._sinks:
            try:
                sink.reopen()
            except OSError as exc:
                log.error(
                    "Cannot reopen the audit log: events go on to the old file",
                    extra={"fields": {"sink": repr(sink), "reason": os_reason(exc)}},
                )
            else:
                log.info("Audit log reopened", extra={"fields": {"sink": repr(sink)}})

    # -- events, from the data path (never waiting) ---------------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Queue `event` for the sinks; if the queue is full, count and drop it."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped.inc(reason="queue_full")
            if self._repeats.note("queue_full"):
                log.warning(
                    "Audit queue full: events dropped",
                    extra={"fields": {"queue_size": self.config.queue_size}},
                )

    def failed(
        self,
        bridge: str,
        bridge_id: str | None,
        caller: Caller,
        target: str,
        *,
        agent: Any,
        started: float,
        error: BaseException,
    ) -> None:
        """A tunnel that did not open: one `tunnel.open` event with what went wrong."""
        outcome, reason = outcome_of(error)
        self.emit(
            TunnelEvent(
                event="tunnel.open",
                time=time.time(),
                tunnel=new_tunnel_id(),
                bridge=bridge,
                bridge_id=bridge_id,
                node=self.node,
                agent_node=self.node if agent is not None else None,
                agent=getattr(agent, "peer", None),
                caller=caller,
                target=target,
                outcome=outcome,
                reason=reason,
                duration=self._clock() - started,
            )
        )

    def opened(
        self, stream: MeteredStream, agent: Any, caller: Caller, target: str, started: float
    ) -> None:
        """A tunnel opened on `agent`'s session: its open event now, progress events while
        it lasts, its close event when `stream` is closed."""
        tunnel = OpenTunnel(
            new_tunnel_id(),
            agent.bridge_name,
            agent.bridge_id,
            agent,
            caller,
            target,
            stream,
            started,
            self._clock() + self.config.interval,
        )
        self._open[stream] = tunnel
        stream.on_close = self._closed
        self.emit(self._event(tunnel, "tunnel.open", "ok"))

    def _closed(self, stream: MeteredStream) -> None:
        tunnel = self._open.pop(stream, None)
        if tunnel is None:
            return
        agent = tunnel.agent
        reason = None
        ended = agent.cancel_scope.cancel_called or getattr(agent.mux, "close_reason", None)
        if agent.close_reason in REVOCATIONS:
            outcome, reason = "revoked", agent.close_reason
        elif (ended or stream.was_reset or self.cutting) and self.stopping:
            outcome, reason = "cut", "relay shutting down"
        elif ended:
            outcome = "cut"
            reason = agent.close_reason or str(agent.mux.close_reason or "agent session ended")
        elif stream.was_reset:
            outcome, reason = "reset", "aborted by the caller or the target"
        else:
            outcome = "ok"
        self.emit(self._event(tunnel, "tunnel.close", outcome, reason))

    def _event(
        self, tunnel: OpenTunnel, kind: str, outcome: str, reason: str | None = None
    ) -> TunnelEvent:
        stream = tunnel.stream
        return TunnelEvent(
            event=kind,
            time=time.time(),
            tunnel=tunnel.tunnel,
            bridge=tunnel.bridge,
            bridge_id=tunnel.bridge_id,
            node=self.node,
            agent_node=self.node,
            agent=tunnel.agent.peer,
            caller=tunnel.caller,
            target=tunnel.target,
            outcome=outcome,
            reason=reason,
            duration=self._clock() - tunnel.started,
            bytes_up=stream.bytes_sent,
            bytes_down=stream.bytes_received,
        )

    # -- the audit task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver events to the sinks and make the progress events, until cancelled; then
        deliver what is still queued (for at most `flush_timeout`) and close the sinks. A
        second call while one runs returns at once."""
        if self._running:
            task_status.started()
            return
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._progress)
                task_status.started()
                await self._deliver()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.config.flush_timeout):
                    while batch := self._take():
                        await self._write(batch)
                for sink in self._sinks:
                    sink.close()
            self._running = False

    def _take(self) -> list[AuditEvent]:
        """The events taken but not yet delivered, then what the queue holds, up to a batch."""
        batch, self._held = self._held, []
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _deliver(self) -> None:
        while True:
            self._held.append(await self._receive.receive())
            await trio.sleep(self.config.batch_delay)
            await self._write(self._take())

    async def _write(self, batch: list[AuditEvent]) -> None:
        for sink in self._sinks:
            try:
                await sink.write(batch)
            except Exception as exc:
                if not isinstance(sink, HookSink):
                    self.dropped.inc(len(batch), reason="sink_failed")
                if self._repeats.note(("sink", id(sink))):
                    reason = exc.strerror if isinstance(exc, OSError) else None
                    log.error(
                        "Audit events not delivered",
                        extra={
                            "fields": {
                                "sink": repr(sink),
                                "events": len(batch),
                                "reason": reason or f"{type(exc).__name__}: {exc}",
                            }
                        },
                    )

    async def _progress(self) -> None:
        """Progress events (their due times are in the order of `_open`) and the summaries
        of dropped events."""
        interval = self.config.interval
        while True:
            now = self._clock()
            while self._open:
                stream, tunnel = next(iter(self._open.items()))
                if tunnel.due > now:
                    break
                del self._open[stream]
                tunnel.due += interval
                self._open[stream] = tunnel  # to the end: due last
                self.emit(self._event(tunnel, "tunnel.progress", "ok"))
            for key, count, seconds in self._repeats.summaries():
                what = "dropped, the audit queue full" if key == "queue_full" else "not delivered"
                log.warning(
                    f"Audit events {what}: {count} more in the last {seconds:.0f} s",
                    extra={"fields": {"events": count}},
                )
            due = next(iter(self._open.values())).due if self._open else now + interval
            await trio.sleep(max(0.0, min(due - now, 1.0)))


#: AgentSession close reasons that mean the bridge's credentials were withdrawn.
BRIDGE_DELETED = "bridge deleted"
SECRET_ROTATED = "bridge secret rotated"
REVOCATIONS = (BRIDGE_DELETED, SECRET_ROTATED)


_TUNNEL_PREFIX = secrets.token_hex(8)
_tunnel_numbers = itertools.count(1)


def new_tunnel_id() -> str:
    """32 hex digits, unique: a random prefix per process, then a counter."""
    return f"{_TUNNEL_PREFIX}{next(_tunnel_numbers):016x}"


def outcome_of(error: BaseException) -> tuple[str, str]:
    """(outcome, reason) of a tunnel that did not open because of `error`."""
    if isinstance(error, TargetNotAllowed):
        return "refused", str(error)
    if isinstance(error, TargetUnreachable):
        status = getattr(error.status, "name", None)
        return ("timed_out" if status == "TIMEOUT" else "unreachable"), str(error)
    if isinstance(error, BridgeBusy):
        return "busy", str(error)
    if isinstance(error, (BridgeNotConnected, UnknownBridge)):
        return "not_connected", str(error)
    if isinstance(error, RelayShuttingDown):
        return "shutting_down", str(error)
    if isinstance(error, trio.Cancelled):
        return "cancelled", "the caller gave up before the tunnel opened"
    return "failed", str(error) or type(error).__name__


def admin_event(kind: str, record: Any, command: str, *, user: str | None, node: str | None):
    """An `AdminEvent` about the bridge `record` (a `BridgeRecord`)."""
    return AdminEvent(
        event=kind,
        time=time.time(),
        bridge=record.name,
        bridge_id=record.id,
        command=command,
        user=user,
        node=node,
    )
