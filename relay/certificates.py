# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay's TLS certificates: the one agents see (a self-signed one kept in the data dir,
or the operator's own), and a node's peer identity (`PeerIdentity`).

A node's peer key and certificate are what the other nodes of a cluster know it by. Separate
from the certificate agents see (nodes often share that one): each node makes its own
self-signed pair on first use, ``peer-cert.pem`` and ``peer-key.pem`` in its data dir, and
registers the certificate's SHA-256 fingerprint in the store. The store is the trust root.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.ops.errors import os_reason
from bridge.transport.tls import certificate_fingerprint
from relay.errors import CertificateError

CERT_FILE = "relay.crt"
KEY_FILE = "relay.key"
#: Taken while the self-signed certificate is checked or made (mode 0600: only the relay's
#: user can open it, so no other local user can hold it).
LOCK_FILE = ".certificate.lock"
#: How long `ensure_self_signed` waits for another process holding the lock.
LOCK_TIMEOUT = 10.0
VALIDITY = datetime.timedelta(days=3650)


def default_hostnames() -> list[str]:
    """What the self-signed certificate covers: localhost, 127.0.0.1, ::1 and this host's name."""
    names = ["localhost", "127.0.0.1", "::1"]
    if (host := socket.gethostname()) and host not in names:
        names.append(host)
    return names


def subject_alt_names(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    """The subjectAltName entries of a certificate for `hostnames`: an IP address entry
    for each IP literal, a DNS name entry for anything else."""
    sans: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def generate_self_signed(hostnames: list[str]) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a self-signed certificate for `hostnames`, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans = subject_alt_names(hostnames)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_self_signed(
    data_dir: str | os.PathLike[str], *, cert_file: str = CERT_FILE, key_file: str = KEY_FILE
) -> tuple[Path, Path]:
    """The (certificate, key) paths in `data_dir` (named `cert_file` and `key_file`), creating
    them on first use. Raises CertificateError with a one-line message."""
    directory = Path(data_dir)
    cert_path, key_path = directory / cert_file, directory / key_file
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = directory / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        with os.fdopen(os.open(lock_path, flags, 0o600), "r+b") as lock:
            os.fchmod(lock.fileno(), 0o600)  # older versions made it 0644
            _lock(lock.fileno(), lock_path)
            if not (cert_path.exists() and key_path.exists()):
                cert_pem, key_pem = generate_self_signed(default_hostnames())
                _write_private(key_path, key_pem, 0o600)
                _write_private(cert_path, cert_pem, 0o644)
    except OSError as exc:
        raise CertificateError(
            f"cannot create the relay certificate in {directory}: {os_reason(exc)}"
        ) from None
    return cert_path, key_path


def _lock(fd: int, path: Path) -> None:
    """An exclusive lock on `fd`, waiting at most `LOCK_TIMEOUT` seconds; CertificateError
    if another process holds it longer."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CertificateError(
                    f"another process has held {path} for {LOCK_TIMEOUT:g} s: is a relay stuck "
                    "creating its certificate? (the lock is released when it exits)"
                ) from None
            time.sleep(0.05)


def load_certificate(cert_path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate in a PEM file (the leaf of a chain)."""
    try:
        data = Path(cert_path).read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"cannot read certificate file {cert_path}: {os_reason(exc)}"
        ) from None
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise CertificateError(
            f"cannot read certificate file {cert_path}: not a PEM certificate"
        ) from None


def fingerprint(cert_path: str | os.PathLike[str]) -> str:
    """`sha256:<hex>` of the certificate, what an agent pins with --fingerprint."""
    cert = load_certificate(cert_path)
    return certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def load_private_key(key_path: str | os.PathLike[str]) -> PrivateKeyTypes:
    """The unencrypted PEM private key in `key_path`. Raises CertificateError with a one-line
    message."""
    try:
        return serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError(f"cannot read key file {key_path}: {os_reason(exc)}") from None
    except (ValueError, TypeError):
        raise CertificateError(
            f"cannot read key file {key_path}: not an unencrypted PEM private key"
        ) from None


def server_ssl_context(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server context for the agent listener: TLS 1.2 or newer only."""
    load_certificate(cert_path)
    load_private_key(key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate"
        if exc.reason != "KEY_VALUES_MISMATCH":
            reason = exc.reason or str(exc)
        raise CertificateError(
            f"cannot use certificate {cert_path} with key {key_path}: {reason}"
        ) from None
    return context


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
        key = load_private_key(key_path)
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
