# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The peer handshake between two relay nodes (sans-IO): mutual authentication on top of TLS.

Before TLS, the dialer names the node it dials in a short plaintext `Prelude` (the magic
``TBNODE\r\n``, a length byte, the name): several nodes may share one peer listener (the
workers of ``bridge-relay serve --workers N``), and the one that accepts a connection hands
it to the node it names. Python's ssl cannot pin a client certificate, so the dialer pins
the listener's certificate in TLS (by the fingerprint the store registers for it) and then
proves its own peer key:

1. listener -> dialer, `Challenge`: the magic, a version byte and 32 random bytes;
2. dialer -> listener, `Proof`: the magic, the version, the dialer's node name, its peer
   certificate (DER) and an ECDSA signature by its peer key over `signed_data` (a context
   string, the challenge, the listener's certificate fingerprint and the name);
3. listener -> dialer, `Verdict`: OK, or refused with a one-line reason.

The listener accepts only a certificate whose fingerprint belongs to a live registered node
of that name (the caller checks that: `verify_proof` returns the fingerprint) and a signature
that verifies. Every length is bounded before anything is allocated; after the verdict the
connection carries a yamux session. See docs/PROTOCOL.md, "Peer links".
"""

from __future__ import annotations

import enum
import hashlib

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.protocol.wire import MessageParser, Reader, prefixed
from bridge.transport.tls import certificate_fingerprint

MAGIC = b"TBPEER\r\n"
PEER_VERSION = 1
NONCE_SIZE = 32
MAX_NAME = 255
MAX_CERTIFICATE = 4096
MAX_SIGNATURE = 128
MAX_MESSAGE = 1024
CONTEXT = b"trio-bridge peer link proof v1\x00"

PRELUDE_MAGIC = b"TBNODE\r\n"
MAX_PRELUDE = len(PRELUDE_MAGIC) + 1 + MAX_NAME

CHALLENGE_SIZE = len(MAGIC) + 1 + NONCE_SIZE
MAX_PROOF = len(MAGIC) + 1 + 1 + MAX_NAME + 2 + MAX_CERTIFICATE + 1 + MAX_SIGNATURE
MAX_VERDICT = 1 + 2 + MAX_MESSAGE


class PeerHandshakeError(Exception):
    """The other node sent something that is not a valid peer handshake message, or a proof
    that does not verify; the message says what, in one line."""


@attrs.frozen
class Prelude:
    """What the dialer sends before TLS: the name of the node it dials."""

    node: str


@attrs.frozen
class Challenge:
    """What the listener sends first: `nonce` is 32 random bytes."""

    nonce: bytes


@attrs.frozen
class Proof:
    """The dialer's answer: its node name, peer certificate (DER) and signature."""

    name: str
    certificate: bytes = attrs.field(repr=False)
    signature: bytes = attrs.field(repr=False)


class VerdictStatus(enum.IntEnum):
    OK = 0
    REFUSED = 1


@attrs.frozen
class Verdict:
    """The listener's decision on a `Proof`, with a one-line reason when refused."""

    status: VerdictStatus = attrs.field(converter=VerdictStatus)
    message: str = ""


def _check_name(name: str) -> str:
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME or not name.isprintable():
        raise PeerHandshakeError(f"node name must be 1..{MAX_NAME} bytes of printable UTF-8")
    return name


def encode_prelude(prelude: Prelude) -> bytes:
    """The wire form of a `Prelude`. Raises PeerHandshakeError for an invalid name."""
    return PRELUDE_MAGIC + prefixed(1, _check_name(prelude.node).encode(), MAX_NAME, "node name")


def encode_challenge(nonce: bytes) -> bytes:
    """The wire form of a `Challenge`. Raises ValueError unless `nonce` is 32 bytes."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the challenge nonce is {NONCE_SIZE} bytes")
    return MAGIC + bytes([PEER_VERSION]) + nonce


def signed_data(nonce: bytes, listener_fingerprint: bytes, name: str) -> bytes:
    """What the dialer signs: the context string, the challenge's nonce, the SHA-256 digest of
    the listener's certificate (as pinned in TLS) and the dialer's node name."""
    return CONTEXT + nonce + listener_fingerprint + name.encode()


def encode_proof(proof: Proof) -> bytes:
    """The wire form of a `Proof`. Raises ValueError (PeerHandshakeError) for a field too long."""
    return (
        MAGIC
        + bytes([PEER_VERSION])
        + prefixed(1, _check_name(proof.name).encode(), MAX_NAME, "node name")
        + prefixed(2, proof.certificate, MAX_CERTIFICATE, "certificate")
        + prefixed(1, proof.signature, MAX_SIGNATURE, "signature")
    )


def encode_verdict(verdict: Verdict) -> bytes:
    """The wire form of a `Verdict`; a message over MAX_MESSAGE bytes is cut short."""
    message = verdict.message.encode()[:MAX_MESSAGE].decode(errors="ignore").encode()
    return bytes([verdict.status]) + prefixed(2, message, MAX_MESSAGE, "message")


def _check_magic(reader: Reader) -> None:
    if reader.take(len(MAGIC)) != MAGIC:
        raise PeerHandshakeError("not a trio-bridge peer handshake")
    version = reader.uint(1)
    if version != PEER_VERSION:
        raise PeerHandshakeError(f"unsupported peer handshake version {version}")


class PreludeParser(MessageParser[Prelude]):
    """Listener side: ``feed`` the first bytes of a connection until it returns the
    `Prelude`; ``leftover`` is the start of the TLS handshake."""

    max_size = MAX_PRELUDE
    error = PeerHandshakeError

    def _parse(self, reader: Reader) -> Prelude:
        if reader.take(len(PRELUDE_MAGIC)) != PRELUDE_MAGIC:
            raise PeerHandshakeError("not a trio-bridge peer link")
        return Prelude(_check_name(reader.text(1, 1, MAX_NAME, "node name")))


class ChallengeParser(MessageParser[Challenge]):
    """Dialer side: ``feed`` bytes until it returns the `Challenge`."""

    max_size = CHALLENGE_SIZE
    error = PeerHandshakeError

    def _parse(self, reader: Reader) -> Challenge:
        _check_magic(reader)
        return Challenge(reader.take(NONCE_SIZE))


class ProofParser(MessageParser[Proof]):
    """Listener side: ``feed`` bytes until it returns the `Proof` (not verified yet)."""

    max_size = MAX_PROOF
    error = PeerHandshakeError

    def _parse(self, reader: Reader) -> Proof:
        _check_magic(reader)
        name = _check_name(reader.text(1, 1, MAX_NAME, "node name"))
        certificate = reader.field(2, 1, MAX_CERTIFICATE, "certificate")
        signature = reader.field(1, 1, MAX_SIGNATURE, "signature")
        return Proof(name, certificate, signature)


class VerdictParser(MessageParser[Verdict]):
    """Dialer side: ``feed`` bytes until it returns the `Verdict`; ``leftover`` is the start
    of the yamux session."""

    max_size = MAX_VERDICT
    error = PeerHandshakeError

    def _parse(self, reader: Reader) -> Verdict:
        code = reader.uint(1)
        message = reader.text(2, 0, MAX_MESSAGE, "message")
        try:
            return Verdict(VerdictStatus(code), message)
        except ValueError:
            raise PeerHandshakeError(f"unknown peer verdict {code}") from None


def make_proof(
    name: str, certificate: bytes, sign, challenge: Challenge, listener_fingerprint: bytes
) -> Proof:
    """The dialer's `Proof` for `challenge`: `sign(data)` signs with its peer key (see
    `relay.certificates.PeerIdentity.sign`); `listener_fingerprint` is the 32-byte digest
    it pinned the listener's certificate by."""
    _check_name(name)
    data = signed_data(challenge.nonce, listener_fingerprint, name)
    return Proof(name, certificate, sign(data))


def verify_proof(proof: Proof, nonce: bytes, listener_fingerprint: bytes) -> str:
    """The fingerprint (``sha256:<hex>``) of the certificate in `proof`, once its signature
    over this listener's challenge verifies with that certificate's key. Raises
    PeerHandshakeError for a certificate that cannot be read or has no EC P-256 key, and for
    a signature that does not verify. Whether the fingerprint is a live node's is the
    caller's to check."""
    try:
        cert = x509.load_der_x509_certificate(proof.certificate)
        key = cert.public_key()
    except ValueError:
        raise PeerHandshakeError("the peer certificate is not a valid DER certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PeerHandshakeError("the peer certificate does not hold an EC P-256 key")
    try:
        key.verify(
            proof.signature,
            signed_data(nonce, listener_fingerprint, proof.name),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise PeerHandshakeError("the proof's signature does not verify") from None
    return certificate_fingerprint(proof.certificate)


def fingerprint_digest(der: bytes) -> bytes:
    """The SHA-256 digest of a DER certificate (what `signed_data` takes)."""
    return hashlib.sha256(der).digest()
