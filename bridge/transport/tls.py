# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""TLS for the agent's connection to the relay: always verified, by CA or by pinned fingerprint."""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from collections.abc import Iterable

import trio

from bridge.ops.errors import os_reason
from bridge.transport.tls_stream import TLSStream

_FINGERPRINT = re.compile(r"sha256:((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})", re.IGNORECASE)


class FingerprintMismatch(Exception):
    """The relay's certificate is not the pinned one."""


class PinnedSSLContext(ssl.SSLContext):
    """A client context that skips CA verification; ``check_fingerprint`` must run instead,
    against ``fingerprints`` (the SHA-256 digests pinned: any one of them is accepted)."""

    fingerprints: tuple[bytes, ...]

    @property
    def fingerprint(self) -> bytes:
        """The first pinned digest (the only one, unless several nodes' certificates are
        pinned)."""
        return self.fingerprints[0]


def parse_fingerprint(text: str) -> bytes:
    """``sha256:`` and 64 hex digits (colons allowed, any case) -> the 32-byte digest."""
    match = _FINGERPRINT.fullmatch(text.strip())
    if match is None or len(hex_digits := match[1].replace(":", "")) != 64:
        raise ValueError(
            "invalid certificate fingerprint: expected sha256: followed by 64 hex digits "
            "(as printed by 'bridge-relay fingerprint')"
        )
    return bytes.fromhex(hex_digits)


def parse_fingerprints(text: str) -> tuple[bytes, ...]:
    """A comma-separated list of fingerprints (as `parse_fingerprint` reads one; empty entries
    ignored, duplicates kept once) -> their digests, in order: the certificates of relay
    nodes that each have their own. Raises ValueError with a one-line message naming the
    entry that is not a fingerprint (and its position, in a list of several)."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ValueError(
            "invalid certificate fingerprint: expected sha256: followed by 64 hex digits "
            "(as printed by 'bridge-relay fingerprint')"
        )
    digests: list[bytes] = []
    for index, entry in enumerate(entries, 1):
        try:
            digest = parse_fingerprint(entry)
        except ValueError:
            if len(entries) == 1:
                raise
            raise ValueError(
                f"invalid certificate fingerprint {entry!r} (entry {index} of {len(entries)}): "
                "expected sha256: followed by 64 hex digits, several separated by commas"
            ) from None
        if digest not in digests:
            digests.append(digest)
    return tuple(digests)


def certificate_fingerprint(der: bytes) -> str:
    """The fingerprint of a DER certificate, as ``sha256:<lowercase hex>``."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def client_ssl_context(
    *, ca_file: str | None = None, fingerprint: str | bytes | Iterable[bytes] | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context.

    By default the relay is verified against the system CAs, or only against ``ca_file``.
    With ``fingerprint`` the CA check is replaced by a pin on the certificate's SHA-256:
    text (one fingerprint, or several separated by commas: `parse_fingerprints`), a digest,
    or several digests; a certificate matching any one of them is accepted. The returned
    `PinnedSSLContext` carries them for `check_fingerprint`. Raises ValueError with a
    one-line message for an invalid fingerprint or a CA file that cannot be used.
    """
    if ca_file is not None and fingerprint is not None:
        raise ValueError(
            "use either a CA file (--ca) or a certificate fingerprint (--fingerprint), not both"
        )
    if fingerprint is not None:
        if isinstance(fingerprint, str):
            digests = parse_fingerprints(fingerprint)
        elif isinstance(fingerprint, bytes):
            digests = (fingerprint,)
        else:
            digests = tuple(dict.fromkeys(fingerprint))
        if not digests or any(len(digest) != 32 for digest in digests):
            raise ValueError("a SHA-256 fingerprint is 32 bytes")
        pinned = PinnedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False
        pinned.verify_mode = ssl.CERT_NONE
        pinned.fingerprints = digests
        context: ssl.SSLContext = pinned
    elif ca_file is not None:
        context = _context_from_ca_file(ca_file)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _context_from_ca_file(path: str) -> ssl.SSLContext:
    try:
        with open(path, encoding="ascii") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"cannot read CA file {path}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"CA file {path} is not a PEM file") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the hostname
    try:
        if data.strip():
            context.load_verify_locations(cadata=data)
    except (ssl.SSLError, ValueError):
        pass
    if not context.cert_store_stats()["x509"]:
        raise ValueError(f"CA file {path} holds no usable PEM certificate")
    return context


def check_fingerprint(
    ssl_stream: trio.SSLStream | TLSStream, expected: bytes | Iterable[bytes]
) -> None:
    """Raise `FingerprintMismatch` unless the peer's certificate has the ``expected`` digest
    (or, given several, any one of them).

    Call right after the TLS handshake, before sending anything secret.
    """
    pins = (expected,) if isinstance(expected, bytes) else tuple(expected)
    der = ssl_stream.getpeercert(binary_form=True)
    if der is None:
        raise FingerprintMismatch("the relay presented no certificate")
    actual = hashlib.sha256(der).digest()
    # Every pin is compared (no early exit), each in constant time.
    if not sum(hmac.compare_digest(actual, pin) for pin in pins):
        pinned = (
            f"the pinned sha256:{pins[0].hex()}"
            if len(pins) == 1
            else f"any of the {len(pins)} pinned fingerprints ("
            + ", ".join(f"sha256:{pin.hex()}" for pin in pins)
            + ")"
        )
        raise FingerprintMismatch(
            f"relay certificate {certificate_fingerprint(der)} does not match {pinned}"
        )


async def open_tls_client(
    tcp: trio.SocketStream, host: str, ssl_context: ssl.SSLContext
) -> TLSStream:
    """Wrap ``tcp`` in TLS as a client of ``host``, run the handshake and, for a
    `PinnedSSLContext`, check the certificate pin, before anything is sent.

    ``host`` is the name the certificate is checked against (none for a pinned context, whose
    pin replaces the name check). Raises OSError when the connection broke before TLS began,
    `trio.BrokenResourceError` (the `ssl.SSLError` as ``__cause__``) when the handshake
    fails, and `FingerprintMismatch`. On any error, and when cancelled, it closes what it
    opened; it has no time limit of its own (the caller's cancel scope is the limit).
    """
    pinned = isinstance(ssl_context, PinnedSSLContext)
    try:
        tls = TLSStream.wrap(
            tcp, ssl_context, server_side=False, server_hostname=None if pinned else host
        )
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    try:
        await tls.do_handshake()
        if isinstance(ssl_context, PinnedSSLContext):
            check_fingerprint(tls, ssl_context.fingerprints)
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls
