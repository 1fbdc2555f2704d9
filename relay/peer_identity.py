# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""A relay node's own peer key and certificate: what other nodes of a cluster know it by.

Separate from the certificate agents see (nodes often share that one): each node makes its
own self-signed pair on first use, ``peer-cert.pem`` and ``peer-key.pem`` in its data dir, and
registers the certificate's SHA-256 fingerprint in the store. The store is the trust root.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.ops.errors import os_reason
from bridge.transport.tls import certificate_fingerprint
from relay.certificates import ensure_self_signed, load_certificate, server_ssl_context
from relay.errors import CertificateError

PEER_CERT_FILE = "peer-cert.pem"
PEER_KEY_FILE = "peer-key.pem"


@attrs.frozen
class PeerIdentity:
    """A node's peer certificate (DER) and private key (EC P-256).

    Make one with `ensure` (generated into a data dir on first use) or `load`; `fingerprint`
    is what the store holds for the node, `ssl_context` serves the peer listener and `sign`
    proves the key in the peer handshake (`relay.peer_handshake`).
    """

    certificate: bytes = attrs.field(repr=False)  # DER
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    cert_path: Path
    key_path: Path

    @classmethod
    def ensure(cls, data_dir: str | os.PathLike[str]) -> PeerIdentity:
        """The identity kept in `data_dir`, generated there on first use (the key mode 0600).
        Raises CertificateError with a one-line message."""
        cert_path, key_path = ensure_self_signed(
            data_dir, cert_file=PEER_CERT_FILE, key_file=PEER_KEY_FILE
        )
        return cls.load(cert_path, key_path)

    @classmethod
    def load(
        cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
    ) -> PeerIdentity:
        """The identity in these PEM files. Raises CertificateError with a one-line message
        when they cannot be read, the key is not an unencrypted EC P-256 key, or the two do
        not match."""
        cert = load_certificate(cert_path)
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except OSError as exc:
            raise CertificateError(f"cannot read key file {key_path}: {os_reason(exc)}") from None
        except (ValueError, TypeError):
            raise CertificateError(
                f"cannot read key file {key_path}: not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CertificateError(f"peer key {key_path} is not an EC P-256 key")
        if cert.public_key() != key.public_key():
            raise CertificateError(
                f"peer key {key_path} does not match the certificate {cert_path}"
            )
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(der, key, Path(cert_path), Path(key_path))

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the certificate: what the store registers for the node."""
        return certificate_fingerprint(self.certificate)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context of the peer listener (TLS 1.2 or newer). Raises CertificateError."""
        return server_ssl_context(self.cert_path, self.key_path)

    def sign(self, data: bytes) -> bytes:
        """An ECDSA (SHA-256) signature of `data` by the peer key, DER-encoded."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))
