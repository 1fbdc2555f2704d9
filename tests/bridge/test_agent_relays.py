# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""An agent given several relays: rounds of attempts in random order, backoff between rounds,
moving to another relay when a session is lost, a list of pinned fingerprints."""

import logging
import socket

import pytest
import trio

from bridge.agent.agent import Agent, AgentConfig, RelayNotTrusted
from bridge.transport.tls import certificate_fingerprint, client_ssl_context

from .bridge_support import BRIDGE_ID, SECRET, FakeRelay, make_certificates


def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tls://127.0.0.1:{sock.getsockname()[1]}"


def url(relay: FakeRelay) -> str:
    return f"tls://127.0.0.1:{relay.port}"


def messages(caplog, prefix: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(prefix)]


@pytest.fixture
def other_certificates(tmp_path):
    """A second relay's own CA and certificate (nodes with self-signed certificates)."""
    return make_certificates(tmp_path)


def make(urls, context, **config) -> Agent:
    config = {"max_backoff": 30.0, "connections": 1, **config}
    return Agent(
        ",".join(urls), BRIDGE_ID, SECRET, ["127.0.0.1:*"], context, config=AgentConfig(**config)
    )


async def test_a_failed_attempt_moves_on_to_the_next_relay_at_once(relay, certificates, caplog):
    context = client_ssl_context(ca_file=certificates.ca_file)
    skipped = []
    for _ in range(6):  # each round in a random order: the live relay is rarely first each time
        caplog.clear()
        dead = [dead_url() for _ in range(3)]
        agent = make([*dead, url(relay)], context)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(5):  # a backoff of up to 30 s would not fit
                await nursery.start(agent.run)
            await relay.next_session()
            nursery.cancel_scope.cancel()
        assert not messages(caplog, "Reconnecting in")
        tried = messages(caplog, "Trying another relay")
        assert all(r.levelno == logging.WARNING for r in tried)
        assert {r.fields["address"] for r in tried} <= {u.removeprefix("tls://") for u in dead}
        skipped.append(len(tried))
    assert max(skipped) > 0


async def test_backoff_comes_after_a_whole_round_failed(nursery, certificates, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    dead = [dead_url() for _ in range(3)]
    agent = make(dead, client_ssl_context(ca_file=certificates.ca_file), max_backoff=0.05)
    nursery.start_soon(agent.run)
    with trio.fail_after(10):
        while len(messages(caplog, "Reconnecting in")) < 3:
            await trio.sleep(0.01)
    names = [r.getMessage() for r in caplog.records]
    rounds = [r for r in caplog.records if r.getMessage() == "Connecting to the relay"]
    # Every round tries each of the three once, then waits.
    segments: list[list[str]] = [[]]
    for record in caplog.records:
        if record.getMessage().startswith("Reconnecting in"):
            segments.append([])
        elif record.getMessage() == "Connecting to the relay":
            segments[-1].append(record.fields["address"])
    for segment in segments[:3]:
        assert sorted(segment) == sorted(u.removeprefix("tls://") for u in dead), names
    assert len(rounds) >= 9
    assert len(messages(caplog, "Trying another relay")) == 2 * len(segments[:-1])


async def test_a_lost_session_moves_to_the_other_relay(nursery, certificates):
    relays = [FakeRelay(certificates), FakeRelay(certificates)]
    for relay in relays:
        await nursery.start(relay.serve)
    context = client_ssl_context(ca_file=certificates.ca_file)
    agent = make([url(r) for r in relays], context, max_backoff=0.05)
    await nursery.start(agent.run)
    current = next(r for r in relays if r.hellos)
    other = next(r for r in relays if r is not current)
    for _ in range(3):
        # The session is lost: the next round tries the relay it was on last.
        await (await current.next_session()).aclose()
        current, other = other, current
    await current.next_session()
    assert [len(r.hellos) for r in relays] == [2, 2]


async def test_any_one_of_the_pinned_fingerprints_is_accepted(
    nursery, certificates, other_certificates, caplog
):
    relays = [FakeRelay(certificates), FakeRelay(other_certificates)]
    for relay in relays:
        await nursery.start(relay.serve)
    pins = ",".join(certificate_fingerprint(c.cert_der) for c in (certificates, other_certificates))
    agent = make([url(r) for r in relays], client_ssl_context(fingerprint=pins), max_backoff=0.05)
    await nursery.start(agent.run)
    first = next(r for r in relays if r.hellos)
    second = next(r for r in relays if r is not first)
    await (await first.next_session()).aclose()
    await (await second.next_session()).aclose()
    await first.next_session()
    assert [len(r.hellos) for r in (first, second)] == [2, 1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_relay_failing_the_pin_is_skipped_with_an_error(
    relay, certificates, other_certificates, caplog
):
    untrusted = FakeRelay(other_certificates)
    pinned = client_ssl_context(fingerprint=certificate_fingerprint(certificates.cert_der))
    async with trio.open_nursery() as nursery:
        await nursery.start(untrusted.serve)
        while not untrusted.connections:  # it comes first in about half of the rounds
            caplog.clear()
            agent = make([url(untrusted), url(relay)], pinned)
            async with trio.open_nursery() as inner:
                with trio.fail_after(5):
                    await inner.start(agent.run)
                await relay.next_session()
                inner.cancel_scope.cancel()
            for record in messages(caplog, "Trying another relay"):
                assert record.levelno == logging.ERROR
                assert "does not match the pinned" in record.fields["reason"]
        nursery.cancel_scope.cancel()


async def test_before_a_first_session_a_round_with_an_untrusted_relay_exits(
    nursery, other_certificates, certificates
):
    untrusted = FakeRelay(other_certificates)
    await nursery.start(untrusted.serve)
    pinned = client_ssl_context(fingerprint=certificate_fingerprint(certificates.cert_der))
    agent = make([url(untrusted), dead_url()], pinned, max_backoff=0.05)
    with trio.fail_after(10), pytest.raises(RelayNotTrusted, match="does not match the pinned"):
        await agent.run()
    assert untrusted.connections == 1  # one round, not retried


class TwoAddresses(trio.abc.HostnameResolver):
    """Trio's resolver hook: ``relays.test`` has two loopback addresses, of which only
    127.0.0.1 has a relay; every lookup is counted."""

    def __init__(self) -> None:
        self.lookups = 0

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        assert host == b"relays.test"
        self.lookups += 1
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in ("127.0.0.2", "127.0.0.1")
        ]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


async def test_a_name_with_several_addresses_counts_as_several_relays(relay, certificates, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    resolver = TwoAddresses()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    pinned = client_ssl_context(fingerprint=certificate_fingerprint(certificates.cert_der))
    dialed, rounds = set(), 0
    try:
        while dialed != {"127.0.0.1", "127.0.0.2"}:  # each comes first in half of the rounds
            rounds += 1
            caplog.clear()
            agent = make([f"tls://relays.test:{relay.port}"], pinned)
            async with trio.open_nursery() as nursery:
                with trio.fail_after(5):
                    await nursery.start(agent.run)
                await relay.next_session()
                nursery.cancel_scope.cancel()
            connecting = messages(caplog, "Connecting to the relay")
            dialed.update(r.fields["ip"] for r in connecting)
            assert connecting[-1].fields == {
                "address": f"relays.test:{relay.port}",
                "ip": "127.0.0.1",
            }
            assert not messages(caplog, "Reconnecting in")
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert resolver.lookups == rounds  # resolved again at every round
    assert {h.bridge_id for h in relay.hellos} == {BRIDGE_ID}
