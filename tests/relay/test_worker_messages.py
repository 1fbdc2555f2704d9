# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The parent-worker messages of `serve --workers` (sans-IO) and the merged metrics text."""

from __future__ import annotations

import pytest

from relay.worker_messages import (
    MAX_MESSAGE,
    MAX_PENDING,
    Handover,
    Kind,
    Message,
    MessageError,
    decode,
    hold,
    metrics_pieces,
    release,
)
from relay.workers import merge_metrics


def test_messages_round_trip():
    offer = Handover("prod", "socks", {"host": "db", "port": 5432, "user": None}, b"\x05")
    for message in [
        Message(Kind.READY),
        hold("ID-1", "prod"),
        release("ID-1"),
        Message(Kind.OFFER, 7, offer.encode()),
        Message(Kind.TAKEN, 7),
    ]:
        assert decode(message.encode()) == message
    assert decode(hold("ID-1", "prod").encode()).held() == ("ID-1", "prod")
    assert decode(Message(Kind.DELIVER, 9, offer.encode()).encode()).handover() == offer


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x01\x00\x00",  # shorter than type and number
        b"\x63\x00\x00\x00\x01",  # unknown type
        b"\x02\x00\x00\x00\x00" + b"x" * 600,  # presence over its bound
        b"\x10" + b"\x00" * (MAX_MESSAGE + 4),  # over the packet bound
    ],
)
def test_invalid_packets_are_refused(packet):
    with pytest.raises(MessageError):
        decode(packet)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # truncated length
        b"\x00\x10{}",  # truncated header
        b"\x00\x02[]",  # not an object
        b'\x00\x1a{"bridge":"b","kind":"ftp"}',  # unknown kind
        b"\xff\xff" + b"x" * 70000,  # header over its bound
    ],
)
def test_invalid_handovers_are_refused(body):
    with pytest.raises(MessageError):
        Handover.decode(body)


def test_handovers_and_names_over_their_bounds_cannot_be_encoded():
    with pytest.raises(MessageError):
        Handover("b", "forward", pending=b"x" * (MAX_PENDING + 1)).encode()
    with pytest.raises(MessageError):
        hold("x" * 300, "y" * 300)


def test_metrics_text_travels_in_pieces_the_last_flagged():
    text = b"m 1\n" * 20000
    pieces = metrics_pieces(3, text)
    assert len(pieces) > 1 and all(len(p.encode()) <= MAX_MESSAGE for p in pieces)
    assert [p.body[0] for p in pieces] == [0] * (len(pieces) - 1) + [1]
    assert b"".join(p.body[1:] for p in pieces) == text
    assert metrics_pieces(4, b"") == [Message(Kind.METRICS, 4, b"\x01")]


def test_merged_metrics_label_each_worker_and_keep_one_head_per_family():
    worker = (
        '# HELP s Sessions.\n# TYPE s gauge\ns{bridge="a"} 1\n'
        "# HELP t Total.\n# TYPE t counter\nt 5\n"
    )
    merged = merge_metrics({"0": worker, "1": worker.replace("1\n", "2\n")})
    assert merged.splitlines() == [
        "# HELP s Sessions.",
        "# TYPE s gauge",
        's{worker="0",bridge="a"} 1',
        's{worker="1",bridge="a"} 2',
        "# HELP t Total.",
        "# TYPE t counter",
        't{worker="0"} 5',
        't{worker="1"} 5',
    ]
