# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The audit trail in process: the embedding hook, the bounded queue, the JSON-lines file."""

from __future__ import annotations

import json
import socket
import time

import psycopg
import pytest

from bridge.ops.metrics import TunnelMetrics
from relay import StoreError, TargetNotAllowed
from relay.audit import AdminEvent, AuditConfig, AuditTrail, Caller, TunnelEvent
from relay.audit_log import JsonLinesSink, StoreAuditSink, matches, parse_since, read, table
from relay.store import PostgresStore

from ..settle import settled
from .relay_support import RelayHarness, captured_logs, receive_all


def _event(n: int = 0, **fields) -> TunnelEvent:
    values = {
        "event": "tunnel.open",
        "time": 1_700_000_000.0 + n,
        "tunnel": f"t{n}",
        "bridge": "prod",
        "bridge_id": "id-1",
        "node": "relay-1:4000",
        "agent_node": "relay-1:4000",
        "agent": "10.0.0.1:50000",
        "caller": Caller("embedded", "job-7"),
        "target": "db:5432",
        "outcome": "ok",
    }
    return TunnelEvent(**(values | fields))


async def test_hook_sees_open_progress_and_close(nursery, store, cert_files, echo_port):
    events: list = []
    harness = RelayHarness(
        nursery, store, cert_files, node="relay-a", audit=AuditConfig(interval=0.05)
    )
    harness.relay.add_audit_hook(events.append)
    await harness.start()
    bridge_id, secret = harness.create_bridge("prod")
    await harness.start_agent(bridge_id, secret, [f"127.0.0.1:{echo_port}"])

    stream = await harness.relay.connect("prod", "127.0.0.1", echo_port, caller="job-7")
    await stream.send_all(b"x" * 1000)
    echoed = b""
    while len(echoed) < 1000:
        echoed += await stream.receive_some(1000 - len(echoed))
    await settled(
        lambda: any(e.event == "tunnel.progress" and e.bytes_down == 1000 for e in events)
    )
    await stream.send_eof()
    assert await receive_all(stream) == b""
    await stream.aclose()
    with pytest.raises(TargetNotAllowed):
        await harness.relay.connect("prod", "127.0.0.1", 1, caller=Caller("embedded", "job-8"))
    await settled(lambda: any(e.outcome == "refused" for e in events))

    opened, *progress, closed, refused = [e for e in events if e.caller.label in ("job-7", "job-8")]
    assert opened.event == "tunnel.open" and opened.outcome == "ok"
    assert {e.event for e in progress} == {"tunnel.progress"}
    assert closed.event == "tunnel.close" and closed.outcome == "ok", closed
    assert (closed.bytes_up, closed.bytes_down) == (1000, 1000)
    assert opened.tunnel == closed.tunnel == progress[0].tunnel
    assert closed.node == closed.agent_node == "relay-a" and closed.bridge_id == bridge_id
    assert closed.caller == Caller("embedded", "job-7") and closed.duration > opened.duration
    assert refused.event == "tunnel.open" and refused.tunnel != opened.tunnel
    assert (
        refused.caller.label == "job-8"
        and refused.reason == "Host not in allowed hosts list: 127.0.0.1:1"
    )
    assert refused.agent_node == "relay-a" and refused.agent == closed.agent


async def test_a_full_queue_drops_counts_and_logs_once():
    metrics = TunnelMetrics()
    trail = AuditTrail(metrics, AuditConfig(queue_size=2, log_interval=3600), node="n")
    trail.add_hook(lambda event: None)
    with captured_logs("relay.audit") as records:
        for n in range(7):
            trail.emit(_event(n))  # nothing drains the queue: the audit task is not running
    assert trail.dropped.value(reason="queue_full") == 5
    assert 'trio_bridge_audit_events_dropped_total{reason="queue_full"} 5' in metrics.render()
    assert [r.getMessage() for r in records] == ["Audit queue full: events dropped"]


async def test_the_file_sink_appends_reopens_and_reads_back(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    await sink.write([_event(0), _event(1, bridge="other", bridge_id="id-2")])
    path.rename(tmp_path / "audit.jsonl.1")
    sink.reopen()
    await sink.write([_event(2, event="tunnel.close", bytes_up=5, bytes_down=7)])
    sink.close()
    with open(path, "ab") as file:
        file.write(b"\0\0{not json\n")  # a line cut short, as after a crash
    old = list(read(tmp_path / "audit.jsonl.1"))
    assert [e["tunnel"] for e in old] == ["t0", "t1"]
    new = list(read(path))
    assert new[1] is None
    assert new[0]["time"] == "2023-11-14T22:13:22.000000Z"
    assert (new[0]["bytes_up"], new[0]["bytes_down"], new[0]["caller"]["label"]) == (5, 7, "job-7")
    assert matches(old[1], bridge="id-2", since=None)
    assert not matches(old[1], bridge="prod", since=None)
    assert not matches(old[0], bridge=None, since=1_700_000_000.5)
    rows = table(old)
    assert rows[0].split()[:3] == ["TIME", "EVENT", "BRIDGE"]
    assert "embedded job-7" in rows[1] and "db:5432" in rows[1]


def test_since_takes_durations_and_iso_times():
    now = time.time()
    assert parse_since("15m", now=now) == now - 900
    assert parse_since("2h", now=now) == now - 7200
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("yesterday")


def test_an_event_serialises_its_caller():
    event = _event(3)
    assert json.loads(json.dumps(event.to_dict()))["caller"] == {
        "kind": "embedded",
        "label": "job-7",
        "address": None,
        "user": None,
    }


async def test_the_store_sink_holds_events_while_the_store_is_unreachable(postgres_url):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = PostgresStore(f"postgresql://postgres@127.0.0.1:{unused.getsockname()[1]}/x")
        sink = StoreAuditSink(down, backlog=3)
        await sink.write([_event(1), _event(2)])  # held, not an error
        assert sink.held == 2
        with pytest.raises(StoreError, match="2 audit events already held"):
            await sink.write([_event(3), _event(4)])  # past the backlog: these are dropped
        assert sink.held == 2
    up = PostgresStore(postgres_url)
    try:
        sink.store = up  # the store is back
        await sink.write([_event(5)])
        assert sink.held == 0
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute("SELECT data->>'tunnel' FROM audit_events ORDER BY id").fetchall()
        assert rows == [("t1",), ("t2",), ("t5",)]
        # Events still held when the relay stops are logged as lost, once.
        sink.store = down
        await sink.write([_event(6)])
        with captured_logs("relay.audit") as records:
            sink.close()
            sink.close()
        assert [(r.getMessage(), r.fields["events"]) for r in records] == [
            ("Audit events lost: the store was unreachable until the relay stopped", 1)
        ]
    finally:
        up.close()
        down.close()


async def test_the_store_sink_appends_to_the_postgresql_audit_table(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        sink = StoreAuditSink(store)
        admin = AdminEvent(
            event="bridge.created",
            time=1_700_000_000.25,
            bridge="prod",
            bridge_id="id-1",
            command="bridge-relay bridges create",
        )
        await sink.write([admin, _event(1, bytes_up=3, bytes_down=4)])
        await sink.write([_event(2, event="tunnel.close")])
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM time), event, bridge, bridge_id, node, data"
                " FROM audit_events ORDER BY id"
            ).fetchall()
    finally:
        store.close()
    assert [row[1:5] for row in rows] == [
        ("bridge.created", "prod", "id-1", None),
        ("tunnel.open", "prod", "id-1", "relay-1:4000"),
        ("tunnel.close", "prod", "id-1", "relay-1:4000"),
    ]
    assert [float(row[0]) for row in rows] == [1_700_000_000.25, 1_700_000_001.0, 1_700_000_002.0]
    assert [row[5] for row in rows] == [
        admin.to_dict(),
        _event(1, bytes_up=3, bytes_down=4).to_dict(),
        _event(2, event="tunnel.close").to_dict(),
    ]
