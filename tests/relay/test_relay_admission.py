# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Admission before authentication: the fair gate, the log of dropped connections, and
the login budget (per address, per bridge ID for new addresses, bcrypt slots), in process on
loopback, logging in from distinct 127.0.0.x source addresses."""

from __future__ import annotations

import socket
import threading

import trio

from bridge.protocol.handshake import Hello, WelcomeParser, WelcomeStatus, encode_hello
from relay import MemoryStore, credentials
from relay.admission import DETAILED_DROPS, AdmissionGate, DropLog

from .relay_support import COST, RelayHarness

TIME_LIMIT = 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the gate ------------------------------------------------------------------------------------


def test_one_address_may_take_every_free_slot_but_not_keep_them():
    gate = AdmissionGate(4)
    evicted = []
    tickets = [gate.admit("a") for _ in range(4)]
    for i, ticket in enumerate(tickets):
        ticket.on_evict = lambda i=i: evicted.append(i)
    assert len(gate) == 4 and gate.held("a") == 4
    b = gate.admit("b")  # full: the address holding the most gives its oldest slot
    assert b is not None and evicted == [0] and tickets[0].evicted
    assert gate.admit("a") is None  # a holds 3, b 1: a may not take b's
    b2 = gate.admit("b")
    assert b2 is not None and evicted == [0, 1]
    assert gate.admit("b") is None  # 2 and 2: nobody gives up a slot for a third
    assert gate.admit("c") is not None and evicted == [0, 1, 2]
    assert (gate.held("a"), gate.held("b"), gate.held("c")) == (1, 2, 1)
    tickets[3].protect()  # past its Hello: never evicted
    assert gate.admit("d") is not None and b.evicted  # from b, the heaviest, its oldest
    assert (gate.held("a"), gate.held("b"), gate.held("d")) == (1, 1, 1)
    b.release()  # an evicted ticket's release changes nothing
    b2.release()
    b2.release()
    assert len(gate) == 3
    # Told how to close once evicted already (it was, before its handler got that far):
    # at once.
    closed = []
    tickets[0].on_eviction(lambda: closed.append("late"))
    tickets[3].on_eviction(lambda: closed.append("protected"))
    assert closed == ["late"]


def test_a_slot_moves_to_the_address_a_proxy_header_gives():
    gate = AdmissionGate(2)
    ticket = gate.admit("10.0.0.1")  # the load balancer
    ticket.move("203.0.113.7")
    assert gate.held("10.0.0.1") == 0 and gate.held("203.0.113.7") == 1
    ticket.release()
    assert len(gate) == 0


def test_drops_are_logged_a_few_at_a_time_then_summed_up():
    clock = Clock()
    drops = DropLog(10, clock=clock)
    logged = [drops.note("handshake timed out", "192.0.2.1") for _ in range(DETAILED_DROPS)]
    assert logged == [True] * DETAILED_DROPS
    for i in range(100):
        assert not drops.note(
            "TLS error: X" if i % 4 else "handshake timed out", f"192.0.2.{i % 3}"
        )
    assert drops.summary() is None  # the interval has not ended
    clock.now += 10
    summary = drops.summary()
    assert summary.count == 100
    assert summary.reasons == {"TLS error: X": 75, "handshake timed out": 25}
    assert summary.sources == [("192.0.2.0", 34), ("192.0.2.1", 33), ("192.0.2.2", 33)]
    assert summary.describe().startswith(
        "Connections dropped before authentication: 100 more in the last 10 s "
        "(TLS error: X: 75, handshake timed out: 25); top sources: 192.0.2.0 (34)"
    )
    assert drops.summary() is None and drops.note("again", "192.0.2.1")  # a new interval


# -- the login budget ----------------------------------------------------------------------------


async def login_from(source: str, harness: RelayHarness, bridge_id: str, secret: str):
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", harness.port))
    tls = trio.SSLStream(trio.SocketStream(sock), harness.cert_files.client_context())
    async with tls:
        await tls.send_all(encode_hello(Hello(bridge_id, secret)))
        parser = WelcomeParser()
        while (welcome := parser.feed(await tls.receive_some())) is None:
            pass
        return welcome.status


async def test_knowing_a_bridge_id_does_not_lock_its_agents_out(nursery, cert_files):
    store = MemoryStore()
    harness = await RelayHarness(nursery, store, cert_files, auth_failures_per_bridge=2).start()
    bridge_id, secret = harness.create_bridge("prod")
    with trio.fail_after(TIME_LIMIT):
        assert await login_from("127.0.0.1", harness, bridge_id, secret) == WelcomeStatus.OK
        attempts = [await login_from("127.0.0.2", harness, bridge_id, "x") for _ in range(4)]
        assert attempts == [WelcomeStatus.AUTH_FAILED] * 2 + [WelcomeStatus.BUSY] * 2
        # A new secret: not cached, so it takes a bcrypt check, charged to the bridge ID for
        # addresses new to it only.
        secret = store.rotate(bridge_id, cost=COST)
        assert await login_from("127.0.0.3", harness, bridge_id, secret) == WelcomeStatus.BUSY
        assert await login_from("127.0.0.1", harness, bridge_id, secret) == WelcomeStatus.OK
        # Verified now: cached, so from anywhere without a check.
        assert await login_from("127.0.0.3", harness, bridge_id, secret) == WelcomeStatus.OK


async def test_logins_that_get_no_bcrypt_slot_in_time_are_busy(nursery, cert_files, monkeypatch):
    store = MemoryStore()
    harness = await RelayHarness(
        nursery, store, cert_files, bcrypt_threads=2, bcrypt_reserved=1, bcrypt_wait=0.2
    ).start()
    bridge_id, secret = harness.create_bridge("prod")
    other_id, other_secret = harness.create_bridge("other")
    with trio.fail_after(TIME_LIMIT):
        assert await login_from("127.0.0.1", harness, bridge_id, secret) == WelcomeStatus.OK
        release = threading.Event()
        real_checkpw = credentials._checkpw

        def stuck(secret_bytes: bytes, hashed: bytes) -> bool:
            if secret_bytes == b"stuck":
                release.wait(TIME_LIMIT)
            return real_checkpw(secret_bytes, hashed)

        monkeypatch.setattr(credentials, "_checkpw", stuck)
        async with trio.open_nursery() as logins:
            # A stranger's check holds the only slot strangers may use...
            logins.start_soon(login_from, "127.0.0.2", harness, other_id, "stuck")
            while not harness.relay._bcrypt_strangers.borrowed_tokens:
                await trio.sleep(0.01)
            # ...so another stranger is answered BUSY once its wait is over...
            status = await login_from("127.0.0.3", harness, other_id, other_secret)
            assert status == WelcomeStatus.BUSY
            # ...while a bridge logging in again from its own address uses the reserved one.
            secret = store.rotate(bridge_id, cost=COST)
            assert await login_from("127.0.0.1", harness, bridge_id, secret) == WelcomeStatus.OK
            release.set()
