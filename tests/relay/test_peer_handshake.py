# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The peer handshake and peer messages (sans-IO), honest and hostile."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bridge.protocol.connect import ConnectStatus
from relay.certificates import PEER_CERT_FILE, PEER_KEY_FILE, PeerIdentity
from relay.errors import CertificateError
from relay.peer_handshake import (
    CHALLENGE_SIZE,
    MAGIC,
    MAX_CERTIFICATE,
    MAX_PRELUDE,
    MAX_PROOF,
    PRELUDE_MAGIC,
    ChallengeParser,
    PeerHandshakeError,
    Prelude,
    PreludeParser,
    Proof,
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
    MAX_PRESENCE_BRIDGES,
    MAX_PRESENCE_LINE,
    MAX_PRESENCE_PART,
    HeldBridge,
    OpenOutcome,
    OpenReply,
    OpenReplyParser,
    OpenRequest,
    OpenRequestParser,
    PeerMessageError,
    Presence,
    PresenceReader,
    decode_presence,
    encode_open_reply,
    encode_open_request,
    encode_presence,
    presence_lines,
)

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def dialer(tmp_path_factory) -> PeerIdentity:
    return PeerIdentity.ensure(tmp_path_factory.mktemp("dialer"))


@pytest.fixture(scope="module")
def listener(tmp_path_factory) -> PeerIdentity:
    return PeerIdentity.ensure(tmp_path_factory.mktemp("listener"))


def _proof(dialer: PeerIdentity, listener: PeerIdentity, name: str = "node-a") -> bytes:
    challenge = ChallengeParser().feed(encode_challenge(NONCE))
    assert challenge is not None
    pinned = fingerprint_digest(listener.certificate)
    return encode_proof(make_proof(name, dialer.certificate, dialer.sign, challenge, pinned))


def _parse_proof(data: bytes) -> Proof:
    proof = ProofParser().feed(data)
    assert proof is not None
    return proof


def test_identity_is_made_once_private_and_reloaded(tmp_path):
    first = PeerIdentity.ensure(tmp_path)
    again = PeerIdentity.ensure(tmp_path)

    assert again.fingerprint == first.fingerprint
    assert first.fingerprint.startswith("sha256:")
    assert stat.S_IMODE(os.stat(tmp_path / PEER_KEY_FILE).st_mode) == 0o600
    # Separate from the agents' certificate.
    assert (tmp_path / PEER_CERT_FILE).exists()
    assert not (tmp_path / "relay.crt").exists()


def test_identity_with_a_mismatched_key_is_refused(tmp_path):
    one, other = PeerIdentity.ensure(tmp_path / "one"), PeerIdentity.ensure(tmp_path / "other")
    with pytest.raises(CertificateError, match="does not match"):
        PeerIdentity.load(one.cert_path, other.key_path)


def test_honest_proof_verifies_to_the_dialers_fingerprint(dialer, listener):
    proof = _parse_proof(_proof(dialer, listener))

    assert proof.name == "node-a"
    assert verify_proof(proof, NONCE, fingerprint_digest(listener.certificate)) == (
        dialer.fingerprint
    )


def test_proof_arriving_byte_by_byte(dialer, listener):
    data = _proof(dialer, listener)
    parser = ProofParser()
    results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] is not None
    assert parser.leftover == b""


@pytest.mark.parametrize(
    "change",
    ["other nonce", "other listener", "other name", "flipped signature"],
)
def test_bad_signature_is_refused(dialer, listener, change):
    proof = _parse_proof(_proof(dialer, listener))
    nonce, pinned = NONCE, fingerprint_digest(listener.certificate)
    if change == "other nonce":
        nonce = bytes(32)
    elif change == "other listener":
        pinned = fingerprint_digest(dialer.certificate)
    elif change == "other name":
        proof = Proof("node-b", proof.certificate, proof.signature)
    else:
        sig = bytearray(proof.signature)
        sig[-1] ^= 1
        proof = Proof(proof.name, proof.certificate, bytes(sig))
    with pytest.raises(PeerHandshakeError, match="signature does not verify"):
        verify_proof(proof, nonce, pinned)


def test_signature_by_another_key_than_the_certificates(dialer, listener):
    """Someone with a registered node's certificate but not its key cannot link."""
    challenge = ChallengeParser().feed(encode_challenge(NONCE))
    assert challenge is not None
    pinned = fingerprint_digest(listener.certificate)
    forged = make_proof("node-a", dialer.certificate, listener.sign, challenge, pinned)
    with pytest.raises(PeerHandshakeError, match="does not verify"):
        verify_proof(forged, NONCE, pinned)


def test_unknown_certificate_still_verifies_to_its_own_fingerprint(listener, tmp_path):
    """The signature check alone does not admit: the fingerprint returned must be a live
    registered node's (the listener checks it), and a stranger's is its own."""
    stranger = PeerIdentity.ensure(tmp_path)
    proof = _parse_proof(_proof(stranger, listener))
    fingerprint = verify_proof(proof, NONCE, fingerprint_digest(listener.certificate))
    assert fingerprint == stranger.fingerprint
    assert fingerprint != listener.fingerprint


def test_garbage_certificate_is_refused(dialer, listener):
    proof = _parse_proof(_proof(dialer, listener))
    with pytest.raises(PeerHandshakeError, match="not a valid DER certificate"):
        verify_proof(Proof(proof.name, b"\x30\x03abc", proof.signature), NONCE, bytes(32))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00" + bytes(100),
        MAGIC + b"\x02" + bytes(32),
    ],
    ids=["http", "tls-hello", "version-2"],
)
def test_garbage_instead_of_a_proof(data):
    with pytest.raises(PeerHandshakeError):
        ProofParser().feed(data)


def test_oversized_certificate_field_is_refused_before_it_is_read():
    data = MAGIC + b"\x01" + b"\x06node-a" + (MAX_CERTIFICATE + 1).to_bytes(2, "big")
    with pytest.raises(PeerHandshakeError, match="certificate length"):
        ProofParser().feed(data)


def test_oversized_signature_field_is_refused():
    data = MAGIC + b"\x01" + b"\x06node-a" + b"\x00\x01x" + b"\xff"
    with pytest.raises(PeerHandshakeError, match="signature length"):
        ProofParser().feed(data)


def test_empty_or_unprintable_name_is_refused():
    with pytest.raises(PeerHandshakeError, match="node name length"):
        ProofParser().feed(MAGIC + b"\x01\x00")
    with pytest.raises(PeerHandshakeError, match="printable"):
        ProofParser().feed(MAGIC + b"\x01\x02a\n" + b"\x00\x01x\x01x")


def test_a_proof_never_buffers_more_than_its_bound():
    parser = ProofParser()
    head = MAGIC + b"\x01" + b"\x01a" + MAX_CERTIFICATE.to_bytes(2, "big")
    parser.feed(head)
    with pytest.raises(PeerHandshakeError):
        parser.feed(bytes(MAX_PROOF * 4))


def test_challenge_and_verdict_round_trip():
    challenge_bytes = encode_challenge(NONCE)
    assert len(challenge_bytes) == CHALLENGE_SIZE
    challenge = ChallengeParser().feed(challenge_bytes)
    assert challenge is not None and challenge.nonce == NONCE
    with pytest.raises(PeerHandshakeError, match="not a trio-bridge peer handshake"):
        ChallengeParser().feed(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(40))

    parser = VerdictParser()
    verdict = parser.feed(encode_verdict(Verdict(VerdictStatus.REFUSED, "x" * 5000)) + b"mux")
    assert verdict is not None and verdict.status == VerdictStatus.REFUSED
    assert len(verdict.message) == 1024
    assert parser.leftover == b"mux"
    with pytest.raises(PeerHandshakeError, match="unknown peer verdict"):
        VerdictParser().feed(b"\x07\x00\x00")


def test_open_request_and_reply_round_trip():
    request = OpenRequest("3b0c", "db.internal", 5432, {"kind": "forward", "label": "x"})
    parser = OpenRequestParser()
    assert parser.feed(encode_open_request(request) + b"early") == request
    assert parser.leftover == b"early"

    reply = OpenReply(OpenOutcome.REFUSED, ConnectStatus.NOT_ALLOWED, "Host not allowed")
    replies = OpenReplyParser()
    assert replies.feed(encode_open_reply(reply)) == reply


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x02", "version"),
        (b"\x01\x00", "bridge length"),
        (b"\x01\x01b" + (2000).to_bytes(2, "big"), "caller length"),
        (b"\x01\x01b\x00\x02[]", "not a JSON object"),
        (b"\x01\x01b\x00\x00\x01h\x00\x00", "invalid port"),
        (b"\x01\x01b\x00\x00\x03a*b\x00\x01", "invalid host"),  # as in a ConnectRequest
    ],
)
def test_hostile_open_requests(data, match):
    with pytest.raises(PeerMessageError, match=match):
        OpenRequestParser().feed(data)


def test_presence_round_trip_and_bounds():
    bridges = [HeldBridge("id-1", "one", 3), HeldBridge("id-2", "two", 0)]
    reader = PresenceReader()
    line = encode_presence(bridges)
    assert reader.feed(line[:5]) is None
    assert reader.feed(line[5:] + line) == Presence.of(bridges)
    assert reader.superseded == 1
    # A draining node says so; a node that does not know the key reads the bridge list.
    draining = encode_presence([], draining=True)
    assert reader.feed(draining) == Presence.of([], draining=True)
    # Only the latest list is decoded: those it supersedes are skipped, unread.
    assert reader.feed(b"not json\n" + draining + b"\n") == Presence.of([], draining=True)
    assert reader.superseded == 2
    assert json.loads(draining) == {"bridges": [], "draining": True}

    for bad in (
        b"[]\n",
        b'{"bridges": [["a", "b", -1]]}\n',
        b'{"bridges": [["a"]]}\n',
        b'{"bridges": [[1, "b", 0]]}\n',
        b'{"bridges": [["a", "b", true]]}\n',
        b"\xff\n",
        b'{"bridges": [], "draining": 1}\n',
        b'{"bridges": [], "more": 1}\n',
        b'{"more":true,"bridges":[]}\n',  # "more" is the last key of a part
        b'{"bridges": []}' * 4000 + b"\n",
    ):
        with pytest.raises(PeerMessageError):
            PresenceReader().feed(bad)
    with pytest.raises(PeerMessageError, match="longer than"):
        small = PresenceReader(max_line=100)
        small.feed(b"x" * 60)
        small.feed(b"x" * 60)


def test_a_large_presence_goes_in_bounded_parts_and_takes_effect_whole():
    many = [HeldBridge(f"{i:032x}", f"bridge-{i}", i % 7) for i in range(MAX_PRESENCE_BRIDGES)]
    lines = list(presence_lines(many, draining=True))
    assert len(lines) == MAX_PRESENCE_BRIDGES // MAX_PRESENCE_PART
    assert all(len(line) <= MAX_PRESENCE_LINE for line in lines)
    reader = PresenceReader()
    for line in lines[:-1]:  # nothing until the last part
        assert reader.decode(line.rstrip(b"\n")) is None
    presence = reader.decode(lines[-1].rstrip(b"\n"))
    assert presence == Presence.of(many, draining=True)
    assert presence.names["bridge-7"] == f"{7:032x}"
    assert [json.loads(line).get("draining", False) for line in lines[-2:]] == [False, True]

    # Names that JSON escapes long are split further, to keep each line bounded.
    wide = [HeldBridge(f"{i}", "\U0001f600" * 64, 0) for i in range(MAX_PRESENCE_PART)]
    lines = list(presence_lines(wide))
    assert len(lines) > 1 and all(len(line) <= MAX_PRESENCE_LINE for line in lines)
    assert decode_presence(b"".join(lines)) == Presence.of(wide)

    # Half a list, and then a whole one: the half is superseded with it.
    reader = PresenceReader()
    assert reader.feed(b"".join(presence_lines(many[:1000]))[:-1]) is None
    assert reader.feed(b"\n" + encode_presence(many[:3])) == Presence.of(many[:3])
    assert reader.superseded == 1

    # A peer cannot grow a list past the bound, nor send one part too large.
    reader = PresenceReader()
    part = [[f"{i}", "b", 0] for i in range(MAX_PRESENCE_PART)]
    with pytest.raises(PeerMessageError, match="longer than"):
        for start in range(0, MAX_PRESENCE_BRIDGES + 1, MAX_PRESENCE_PART):
            chunk = [[f"{start + i}", "b", 0] for i in range(MAX_PRESENCE_PART)]
            reader.decode(
                json.dumps({"bridges": chunk, "more": True}, separators=(",", ":")).encode()
            )
    with pytest.raises(PeerMessageError, match="no valid bridge list"):
        PresenceReader().decode(json.dumps({"bridges": [*part, ["x", "b", 0]]}).encode())
    with pytest.raises(ValueError):
        encode_presence([*many, HeldBridge("x", "x", 0)])


def test_prelude_names_the_node_dialed_and_leaves_tls_to_the_caller():
    wire = encode_prelude(Prelude("relay1/worker-0.3"))
    assert len(wire) == len(PRELUDE_MAGIC) + 1 + len("relay1/worker-0.3")
    parser = PreludeParser()
    for byte in wire[:-1]:  # byte by byte: nothing until the name is whole
        assert parser.feed(bytes([byte])) is None
    assert parser.feed(wire[-1:] + b"\x16\x03\x01") == Prelude("relay1/worker-0.3")
    assert parser.leftover == b"\x16\x03\x01"
    assert len(encode_prelude(Prelude("n" * 255))) == MAX_PRELUDE


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",  # a TLS ClientHello, no prelude
        PRELUDE_MAGIC + b"\x00",  # an empty name
        PRELUDE_MAGIC + b"\x03a\nb",  # not printable
        PRELUDE_MAGIC + b"\x02\xff\xfe",  # not UTF-8
    ],
)
def test_prelude_refuses_garbage(wire: bytes):
    with pytest.raises(PeerHandshakeError):
        PreludeParser().feed(wire)


def test_prelude_name_is_bounded():
    with pytest.raises(PeerHandshakeError):
        encode_prelude(Prelude("n" * 256))
    with pytest.raises(PeerHandshakeError):
        encode_prelude(Prelude(""))
