# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The life of one stream, as a transition table (in the manner of h11's _state.py).

A stream opens with SYN and is acknowledged with ACK, but the ACK changes nothing about
what may be sent (data flows before it), so only the two halves and RST make the state:
FIN closes our half (SEND_FIN) or the peer's (RECV_FIN); RST ends both at once.
"""

from __future__ import annotations

import enum


class StreamState(enum.Enum):
    """Where a stream is in its life (`TRANSITIONS`)."""

    OPEN = "open"
    LOCAL_CLOSED = "half-closed (local)"
    REMOTE_CLOSED = "half-closed (remote)"
    CLOSED = "closed"
    RESET = "reset"

    # Members are singletons compared by identity: hash them so too, in C (`Enum.__hash__`
    # is a Python call, and the hot path asks `state in CAN_SEND` for every frame).
    __hash__ = object.__hash__


class StreamInput(enum.Enum):
    """What happens to a stream: we send, or receive, data, FIN or RST."""

    SEND_DATA = "send data"
    SEND_FIN = "send FIN"
    SEND_RST = "send RST"
    RECV_DATA = "receive data"
    RECV_FIN = "receive FIN"
    RECV_RST = "receive RST"


S, I = StreamState, StreamInput
TRANSITIONS: dict[StreamState, dict[StreamInput, StreamState]] = {
    S.OPEN: {
        I.SEND_DATA: S.OPEN,
        I.RECV_DATA: S.OPEN,
        I.SEND_FIN: S.LOCAL_CLOSED,
        I.RECV_FIN: S.REMOTE_CLOSED,
        I.SEND_RST: S.RESET,
        I.RECV_RST: S.RESET,
    },
    S.LOCAL_CLOSED: {
        I.RECV_DATA: S.LOCAL_CLOSED,
        I.RECV_FIN: S.CLOSED,
        I.SEND_RST: S.RESET,
        I.RECV_RST: S.RESET,
    },
    S.REMOTE_CLOSED: {
        I.SEND_DATA: S.REMOTE_CLOSED,
        I.SEND_FIN: S.CLOSED,
        I.RECV_FIN: S.REMOTE_CLOSED,
        I.SEND_RST: S.RESET,
        I.RECV_RST: S.RESET,
    },
    S.CLOSED: {},
    S.RESET: {},
}
del S, I

#: States from which a stream is gone: the connection forgets it.
FINAL_STATES = frozenset({StreamState.CLOSED, StreamState.RESET})
#: States in which we may still send data, and in which the peer may.
CAN_SEND = frozenset({StreamState.OPEN, StreamState.REMOTE_CLOSED})
CAN_RECEIVE = frozenset({StreamState.OPEN, StreamState.LOCAL_CLOSED})


def next_state(state: StreamState, event: StreamInput) -> StreamState | None:
    """The state after ``event``, or None where the table has no such transition."""
    return TRANSITIONS[state].get(event)
