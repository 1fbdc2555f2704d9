# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The yamux state machine, sans-IO: feed it bytes, get events; call methods, get bytes to send.

Nothing here does I/O or imports trio. ``receive_data`` parses frames in place and reports
payloads as views into the bytes it was given (no copies). Outgoing frames accumulate in two
buffers that ``data_to_send`` hands over together, so a writer sends many frames in one call:
control frames (pings and their answers, window updates, SYN, ACK, RST, GoAway) first, then
data frames and FINs in the order they were queued (a FIN never overtakes its stream's data).

Work the peer can cause is bounded. Control output queued in answer to the peer's frames is
bounded by ``Config.max_control_backlog``: once that much is queued, ``receive_data`` stops
parsing and holds the rest of its input (``input_held``) until ``resume_receiving``, which
the adapter calls once the writer has taken the queued frames. Streams the peer opened and
the application has not accepted are bounded by ``accept_backlog`` (the oldest is refused).
Our pings carry opaque values the caller picks; an answer to a ping never sent is a
protocol violation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import events as ev
from .config import Config
from .errors import LocalProtocolError, RemoteProtocolError
from .frames import (
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_UINT32,
    Flag,
    FrameType,
    GoAwayCode,
    check_header,
)
from .state import CAN_RECEIVE, CAN_SEND, FINAL_STATES, StreamInput, StreamState, next_state
from .windows import ReceiveWindow, WindowBudget

# Plain ints on the hot path: enum arithmetic costs a method call per operation.
_DATA, _WINDOW_UPDATE, _PING, _GO_AWAY = map(int, FrameType)
_SYN, _ACK, _FIN, _RST = map(int, (Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST))
_MAX_STREAM_ID = MAX_UINT32 - 1


class _Stream:
    __slots__ = (
        "abandoned",
        "accepted",
        "ack_pending",
        "inbound",
        "send_window",
        "state",
        "window",
    )

    def __init__(self, inbound: bool) -> None:
        self.state = StreamState.OPEN
        self.window = ReceiveWindow()
        self.send_window = INITIAL_WINDOW
        self.inbound = inbound
        #: Whether the opening handshake is over: for a stream the peer opened, the
        #: application accepted it (ACK sent); for ours, the peer answered.
        self.accepted = False
        #: The application closed the stream: data still arriving is answered with RST.
        self.abandoned = False
        #: Accepted with the ACK deferred: it rides on the stream's first frame.
        self.ack_pending = False


class Connection:
    """The yamux protocol state of one session, without I/O (as h11's `Connection`).

    Feed what the transport delivers to `receive_data` and act on the events it returns;
    call the sending methods and write what `data_to_send` returns to the transport.
    ``client`` picks odd stream IDs for the streams we open. ``clock`` (seconds, monotonic)
    drives window growth and the stream deadlines.

    Errors: a call the protocol does not allow in the current state (a bug of the caller)
    raises `LocalProtocolError` and changes nothing. A peer that breaks the protocol makes
    `receive_data` raise `RemoteProtocolError`, after queuing a GoAway with the error's code;
    the connection is then over (`terminated`): sending methods raise `LocalProtocolError`
    and `receive_data` raises the same error again. Nothing here blocks or awaits, so there
    is no cancellation to speak of.
    """

    def __init__(
        self,
        *,
        client: bool,
        config: Config | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.config = config if config is not None else Config()
        self._clock = clock
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        #: Data frames and FINs, in order.
        self._out = bytearray()
        #: Control frames: they go out ahead of ``_out``.
        self._urgent = bytearray()
        #: What a transport write did not take: it goes out before anything else.
        self._resume = bytearray()
        #: Input not parsed yet because the control output was full (see resume_receiving).
        self._held: memoryview | None = None
        #: The stream whose SYN is the last frame in ``_urgent`` (its first data frame may
        #: carry the SYN instead), or None.
        self._syn_last: int | None = None
        self._control_limit = self.config.max_control_backlog
        #: Opaque values of our pings that the peer has not answered.
        self._pings: set[int] = set()
        self._budget = WindowBudget(self.config.session_receive_budget)
        self._rtt = 0.0
        #: Streams we opened that the peer has not acknowledged, with when we opened them.
        self._unacknowledged: dict[int, float] = {}
        #: Streams the application closed while the peer was still sending, with when.
        self._lingering: dict[int, float] = {}
        #: Streams the peer opened that wait for the application, oldest first.
        self._awaiting: dict[int, None] = {}
        self._inbound = 0
        # Where a frame's payload continues into the next receive_data call.
        self._partial_header = bytearray()
        self._payload_left = 0
        self._payload_stream: int | None = None  # whose data this is (None: discard it)
        self._payload_owner: int | None = None  # whose FIN/RST to apply once it is read
        self._payload_flags = 0
        self.local_go_away = False
        self.remote_go_away = False
        #: Set once the session is over: the error that ended it (or the peer's GoAway).
        self.terminated: RemoteProtocolError | None = None
        self.bytes_received = 0
        self.bytes_sent = 0

    # ---- inspection -------------------------------------------------------------------

    @property
    def streams_open(self) -> int:
        """Streams open in either direction (not yet forgotten)."""
        return len(self._streams)

    @property
    def rtt(self) -> float:
        """The round-trip time given to `set_rtt` (0.0 until then)."""
        return self._rtt

    def stream_state(self, stream_id: int) -> StreamState | None:
        """The stream's state, or None once the connection has forgotten it (closed both
        ways, reset, or never opened): the one answer to "is this stream still here"."""
        stream = self._streams.get(stream_id)
        return stream.state if stream is not None else None

    def can_send(self, stream_id: int) -> bool:
        """Whether data may be sent on the stream: it is open and our half is not closed."""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.state in CAN_SEND

    def send_window(self, stream_id: int) -> int:
        """How many bytes the peer lets us send on the stream now.

        Raises `LocalProtocolError` if the stream is not open.
        """
        return self._stream(stream_id).send_window

    def pending_output(self) -> int:
        """How many bytes `data_to_send` would return now."""
        return len(self._out) + len(self._urgent) + len(self._resume)

    def control_output(self) -> int:
        """How many bytes of control frames are queued (bounded by ``max_control_backlog``
        while the peer keeps the input coming: see `input_held`)."""
        return len(self._urgent)

    @property
    def input_held(self) -> bool:
        """Whether `receive_data` stopped with input left, the control output being full:
        take `data_to_send`, then call `resume_receiving`."""
        return self._held is not None

    @property
    def streams_awaiting_accept(self) -> int:
        """Streams the peer opened that the application has not accepted yet."""
        return len(self._awaiting)

    def set_rtt(self, seconds: float) -> None:
        """Record a measured round-trip time: windows grow faster when the RTT is known."""
        self._rtt = seconds

    @property
    def unacknowledged_streams(self) -> int:
        """Streams we opened that the peer has neither acknowledged nor refused yet."""
        return len(self._unacknowledged)

    def overdue_streams(self, opened_before: float) -> list[int]:
        """Streams we opened before ``opened_before`` that the peer still has not acknowledged."""
        return _older_than(self._unacknowledged, opened_before)

    def lingering_streams(self, closed_before: float) -> list[int]:
        """Streams the application closed before ``closed_before`` that the peer has not
        finished."""
        return _older_than(self._lingering, closed_before)

    # ---- sending ----------------------------------------------------------------------

    def data_to_send(self) -> bytearray:
        """Everything queued for the transport, control frames first; the caller owns the
        buffer."""
        out = self._out
        self._syn_last = None
        if self._urgent or self._resume:
            head = self._resume
            head += self._urgent
            head += out
            out = head
            self._resume = bytearray()
            self._urgent = bytearray()
        self._out = bytearray()
        self.bytes_sent += len(out)
        return out

    def unsend(self, data: bytes | bytearray | memoryview) -> None:
        """Put back, in front of anything queued since, what a transport write did not take."""
        if data:
            self._resume[:0] = data
            self.bytes_sent -= len(data)

    def _frame(self, type: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a control frame (it goes out ahead of queued data)."""
        self._urgent += HEADER.pack(0, type, flags, stream_id, length)
        self._syn_last = None

    def _first_flags(self, stream_id: int, stream: _Stream, *, syn: bool = True) -> int:
        """The flags a stream's next frame must carry on top of its own: a deferred ACK, or
        (``syn``) the SYN still queued as the last control frame, taken back: this frame
        carries it."""
        if stream.ack_pending:
            stream.ack_pending = False
            return _ACK
        if syn and self._syn_last == stream_id:
            self._syn_last = None
            del self._urgent[-HEADER_SIZE:]
            return _SYN
        return 0

    def open_stream(self) -> int:
        """Open a stream (queues its SYN) and return its ID; data may be sent at once.

        Raises `LocalProtocolError` after GoAway (either way), once the session is over, or
        when the stream IDs are exhausted.
        """
        self._check_alive()
        if self.remote_go_away or self.local_go_away:
            raise LocalProtocolError("no new streams after GoAway")
        stream_id = self._next_id
        if stream_id > _MAX_STREAM_ID:
            raise LocalProtocolError("stream IDs exhausted: open a new session")
        self._next_id += 2
        self._streams[stream_id] = _Stream(inbound=False)
        self._unacknowledged[stream_id] = self._clock()
        self._frame(_WINDOW_UPDATE, _SYN, stream_id, 0)
        # Data sent before anything else is queued carries the SYN itself (yamux allows
        # SYN on a Data frame): a request opens its stream in one frame.
        self._syn_last = stream_id
        return stream_id

    def accept_stream(self, stream_id: int, *, defer_ack: bool = False) -> None:
        """Acknowledge (ACK) a stream the peer opened (`StreamOpened`).

        With ``defer_ack``, no frame is queued now: the ACK rides on the stream's first
        frame (its data, FIN, RST or window update), so an answer goes out in one frame; the
        peer counts the stream as unacknowledged until then. Raises `LocalProtocolError` if
        it is not one waiting to be accepted.
        """
        stream = self._stream(stream_id)
        if stream.accepted or not stream.inbound:
            raise LocalProtocolError(f"stream {stream_id} is not waiting to be accepted")
        stream.accepted = True
        del self._awaiting[stream_id]
        if defer_ack:
            # The window has not grown before the application reads: the ACK owes no credit.
            stream.ack_pending = True
        else:
            self._frame(_WINDOW_UPDATE, _ACK, stream_id, stream.window.grown())

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the send window allows, in frames of at most
        ``max_frame_size``; return how much that was (0: wait for `WindowUpdated`).

        Raises `LocalProtocolError` if the stream is not open for sending.
        """
        stream = self._stream(stream_id)
        if stream.state not in CAN_SEND:
            raise LocalProtocolError(f"stream {stream_id} is {stream.state.value}: cannot send")
        total = min(len(data), stream.send_window)
        if total == 0:
            return 0
        stream.send_window -= total
        view = memoryview(data)
        frame = self.config.max_frame_size
        out = self._out
        flags = self._first_flags(stream_id, stream) if stream.ack_pending or self._syn_last else 0
        for start in range(0, total, frame):
            chunk = view[start : min(start + frame, total)]
            out += HEADER.pack(0, _DATA, flags, stream_id, len(chunk))
            out += chunk
            flags = 0
        return total

    def send_eof(self, stream_id: int) -> None:
        """Half-close the stream (FIN, after its data). Raises `LocalProtocolError` if our
        half is closed already or the stream is not open."""
        flags = _FIN | self._first_flags(stream_id, self._stream(stream_id))
        self._transition(stream_id, StreamInput.SEND_FIN)
        # With the data, not ahead of it: a graceful close never overtakes what it closes.
        self._out += HEADER.pack(0, _WINDOW_UPDATE, flags, stream_id, 0)

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream (RST); the connection forgets it. Raises `LocalProtocolError` if
        the stream is not open."""
        flags = _RST | self._first_flags(stream_id, self._stream(stream_id), syn=False)
        self._transition(stream_id, StreamInput.SEND_RST)
        self._frame(_WINDOW_UPDATE, flags, stream_id, 0)

    def close_stream(self, stream_id: int) -> None:
        """The application is done with the stream, having read all it was sent.

        Sends FIN if not sent yet; data that still arrives is answered with RST (as TCP does).
        Raises `LocalProtocolError` if the stream is not open.
        """
        stream = self._stream(stream_id)
        if stream.state in CAN_SEND:
            self.send_eof(stream_id)
        stream.abandoned = True
        if stream_id in self._streams:
            self._lingering[stream_id] = self._clock()

    def consumed(self, stream_id: int, amount: int) -> None:
        """The application read ``amount`` bytes of the stream: credit them back to the peer
        (a WindowUpdate once half the window is read). Ignored for a forgotten stream."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.state not in CAN_RECEIVE:
            return
        delta = stream.window.consume(
            amount, self._clock, self._rtt, self.config.max_stream_window, self._budget
        )
        if delta:
            self._frame(_WINDOW_UPDATE, self._first_flags(stream_id, stream), stream_id, delta)

    def send_ping(self, opaque: int) -> None:
        """Queue a PING; the peer answers with the same ``opaque`` (`PingAcknowledged`).

        Pick ``opaque`` unpredictably (the peer must not answer pings in advance) and not
        one that is `ping_unanswered`. An answer to a ping never sent ends the session with a
        protocol error. Raises `LocalProtocolError` once the session is over or if
        ``opaque`` does not fit 32 bits.
        """
        self._check_alive()
        if not 0 <= opaque <= MAX_UINT32:
            raise LocalProtocolError(f"ping opaque value {opaque} does not fit 32 bits")
        self._pings.add(opaque)
        self._frame(_PING, _SYN, 0, opaque)

    def ping_unanswered(self, opaque: int) -> bool:
        """Whether a ping of ours with this opaque value awaits its answer."""
        return opaque in self._pings

    def protocol_violation(self, message: str) -> RemoteProtocolError:
        """End the session for a violation the adapter detected (a peer that does not read
        what we must send it): queue GoAway with the protocol-error code and return the
        error, which `terminated` holds from then on."""
        exc = RemoteProtocolError(message, GoAwayCode.PROTOCOL_ERROR)
        if self.terminated is None:
            self._fail(exc)
        return exc

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Queue a GoAway: the peer may open no more streams (``code`` 0) or the session
        ends (any other code). Raises `LocalProtocolError` once the session is over."""
        self._check_alive()
        self.local_go_away = True
        self._frame(_GO_AWAY, 0, 0, code)

    # ---- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Parse ``data`` (any split of the byte stream) and return what the peer did.

        `DataReceived` events hold views into ``data``: keep it unchanged while they are in
        use. Answers (PING ACKs, RSTs for refused streams) are queued for `data_to_send`.
        Raises `RemoteProtocolError` if the peer broke the protocol (a GoAway is queued).
        """
        self._check_alive(remote=True)
        if self._held is not None:
            raise LocalProtocolError("input is held: call resume_receiving first")
        self.bytes_received += len(data)
        return self._parse(memoryview(data))

    def resume_receiving(self) -> list[ev.Event]:
        """Parse the input `receive_data` held back (see `input_held`), as far as the
        control output allows again; return the events. Raises as `receive_data` does."""
        self._check_alive(remote=True)
        held, self._held = self._held, None
        return self._parse(held) if held is not None else []

    def _parse(self, view: memoryview) -> list[ev.Event]:
        events: list[ev.Event] = []
        end = len(view)
        pos = 0
        partial = self._partial_header
        streams = self._streams
        DataReceived = ev.DataReceived
        try:
            while pos < end:
                if self._payload_left:
                    take = min(self._payload_left, end - pos)
                    if self._payload_stream is not None:
                        events.append(ev.DataReceived(self._payload_stream, view[pos : pos + take]))
                    pos += take
                    self._payload_left -= take
                    if not self._payload_left:
                        self._end_payload(events)
                    continue
                if partial or end - pos < HEADER_SIZE:
                    take = min(HEADER_SIZE - len(partial), end - pos)
                    partial += view[pos : pos + take]
                    pos += take
                    if len(partial) < HEADER_SIZE:
                        break
                    header = HEADER.unpack(partial)
                    partial.clear()
                else:
                    header = HEADER.unpack_from(view, pos)
                    pos += HEADER_SIZE
                    version, type, flags, stream_id, length = header
                    if not (version or type or flags) and length <= end - pos:
                        # The common case, a plain Data frame all in this buffer, inline.
                        stream = streams.get(stream_id)
                        if (
                            stream is not None
                            and stream.accepted
                            and not stream.abandoned
                            and stream.state in CAN_RECEIVE
                        ):
                            stream.window.receive(length)
                            if length:
                                events.append(DataReceived(stream_id, view[pos : pos + length]))
                                pos += length
                            continue
                self._on_frame(header, events)
                if len(self._urgent) >= self._control_limit and pos < end:
                    # Answers pile up faster than the peer reads them: stop here.
                    self._held = view[pos:]
                    break
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def _on_frame(self, header: tuple[int, int, int, int, int], events: list[ev.Event]) -> None:
        version, type, flags, stream_id, length = header
        check_header(version, type)
        if type in (_DATA, _WINDOW_UPDATE):
            if stream_id == 0:
                raise RemoteProtocolError(f"{FrameType(type).name} frame for stream 0")
            self._on_stream_frame(type, flags, stream_id, length, events)
        elif type == _PING:
            if flags & _SYN:
                self._frame(_PING, _ACK, 0, length)
                events.append(ev.PingReceived(length))
            elif flags & _ACK:
                if length not in self._pings:
                    raise RemoteProtocolError(f"peer answered a ping never sent (opaque {length})")
                self._pings.discard(length)
                events.append(ev.PingAcknowledged(length))
        else:
            self._on_go_away(length, events)

    def _on_stream_frame(
        self, type: int, flags: int, stream_id: int, length: int, events: list[ev.Event]
    ) -> None:
        stream = self._streams.get(stream_id)
        if flags & _SYN:
            stream = self._on_syn(stream_id, events)
        elif stream is not None and not stream.accepted and not stream.inbound and not flags & _RST:
            # Any answer but a refusal acknowledges a stream we opened: hashicorp sends no
            # ACK for a stream whose FIN reached it before its application accepted it.
            stream.accepted = True
            del self._unacknowledged[stream_id]
            events.append(ev.StreamAccepted(stream_id))
        if type == _DATA and length:
            deliver = stream is not None
            if stream is not None:
                if stream.abandoned or stream.state not in CAN_RECEIVE:
                    # Data that will never be read (the application closed the stream, or
                    # the peer had sent FIN): refuse the stream, as TCP would.
                    deliver = False
                    if not flags & _RST:
                        self._remove(stream_id, stream)
                        self._frame(_WINDOW_UPDATE, _RST, stream_id, 0)
                        events.append(ev.StreamReset(stream_id))
                        stream = None
                else:
                    stream.window.receive(length)
            self._payload_left = length
            self._payload_stream = stream_id if deliver else None
            self._payload_owner = stream_id if stream is not None else None
            self._payload_flags = flags
            return
        elif stream is not None and length:
            if stream.send_window + length > MAX_UINT32:
                raise RemoteProtocolError(
                    f"peer grew the send window of stream {stream_id} past 2**32-1"
                )
            stream.send_window += length
            if stream.state in CAN_SEND:
                events.append(ev.WindowUpdated(stream_id, length))
        if stream is not None:
            self._on_close_flags(stream_id, flags, events)

    def _end_payload(self, events: list[ev.Event]) -> None:
        stream_id = self._payload_owner
        self._payload_stream = self._payload_owner = None
        if stream_id is not None and stream_id in self._streams:
            self._on_close_flags(stream_id, self._payload_flags, events)

    def _on_close_flags(self, stream_id: int, flags: int, events: list[ev.Event]) -> None:
        if flags & _RST:
            self._transition(stream_id, StreamInput.RECV_RST)
            events.append(ev.StreamReset(stream_id))
        elif flags & _FIN:
            before = self._streams[stream_id].state
            after = self._transition(stream_id, StreamInput.RECV_FIN)
            if after is not None and after is not before:
                events.append(ev.StreamEnded(stream_id, after is StreamState.CLOSED))

    def _on_syn(self, stream_id: int, events: list[ev.Event]) -> _Stream | None:
        if (stream_id & 1) == self.client:
            raise RemoteProtocolError(f"peer opened stream {stream_id}, an ID of ours")
        if stream_id in self._streams:
            raise RemoteProtocolError(f"peer opened stream {stream_id}, which is open already")
        config = self.config
        if self.local_go_away or self._inbound >= config.max_inbound_streams:
            self._frame(_WINDOW_UPDATE, _RST, stream_id, 0)
            return None
        if len(self._awaiting) >= config.accept_backlog:
            # The application does not keep up: refuse the stream that waited longest.
            oldest = next(iter(self._awaiting))
            self._remove(oldest, self._streams[oldest])
            self._frame(_WINDOW_UPDATE, _RST, oldest, 0)
            events.append(ev.StreamReset(oldest))
        stream = self._streams[stream_id] = _Stream(inbound=True)
        self._awaiting[stream_id] = None
        self._inbound += 1
        events.append(ev.StreamOpened(stream_id))
        return stream

    def _on_go_away(self, code: int, events: list[ev.Event]) -> None:
        self.remote_go_away = True
        events.append(ev.GoAwayReceived(code))
        if code != GoAwayCode.NORMAL:
            self.terminated = RemoteProtocolError(
                f"peer ended the session with GoAway code {code}", code
            )

    # ---- bookkeeping ------------------------------------------------------------------

    def _stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"no open stream {stream_id}")
        return stream

    def _transition(self, stream_id: int, event: StreamInput) -> StreamState | None:
        stream = self._stream(stream_id)
        state = next_state(stream.state, event)
        if state is None:
            if event.name.startswith("SEND"):
                raise LocalProtocolError(
                    f"cannot {event.value} on stream {stream_id}: it is {stream.state.value}"
                )
            return None
        stream.state = state
        if state in FINAL_STATES:
            self._remove(stream_id, stream)
        return state

    def _remove(self, stream_id: int, stream: _Stream) -> None:
        if stream.state not in FINAL_STATES:
            stream.state = StreamState.RESET
        del self._streams[stream_id]
        self._unacknowledged.pop(stream_id, None)
        self._lingering.pop(stream_id, None)
        self._budget.give_back(stream.window.grown())
        if stream.inbound:
            self._inbound -= 1
            if not stream.accepted:
                del self._awaiting[stream_id]

    def _check_alive(self, remote: bool = False) -> None:
        if self.terminated is not None:
            if remote:
                raise self.terminated
            raise LocalProtocolError(f"the session is over: {self.terminated}")

    def _fail(self, exc: RemoteProtocolError) -> None:
        self.terminated = exc
        self._held = None
        self._frame(_GO_AWAY, 0, 0, exc.code)
        self._streams.clear()
        self._awaiting.clear()
        self._unacknowledged.clear()
        self._lingering.clear()


def _older_than(since: dict[int, float], before: float) -> list[int]:
    """The keys of an insertion-ordered ``{stream_id: time}`` whose time is <= ``before``."""
    old = []
    for stream_id, when in since.items():
        if when > before:
            break
        old.append(stream_id)
    return old
