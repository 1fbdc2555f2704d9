# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
import ipaddress
import socket
import ssl
import stat

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from relay.certificates import (
    ensure_self_signed,
    fingerprint,
    load_certificate,
    server_ssl_context,
)
from relay.errors import CertificateError


def test_self_signed_certificate_is_created_once(tmp_path):
    cert_path, key_path = ensure_self_signed(tmp_path / "data")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = fingerprint(cert_path)
    assert first.startswith("sha256:") and len(first) == 7 + 64
    assert ensure_self_signed(tmp_path / "data") == (cert_path, key_path)
    assert fingerprint(cert_path) == first

    cert = load_certificate(cert_path)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname()} <= set(sans.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(
        sans.get_values_for_type(x509.IPAddress)
    )


def test_unusable_files_are_reported(tmp_path, cert_files):
    with pytest.raises(CertificateError, match="cannot read certificate file .*missing.pem"):
        server_ssl_context(tmp_path / "missing.pem", cert_files.key)
    with pytest.raises(CertificateError, match="cannot read key file"):
        server_ssl_context(cert_files.cert, tmp_path / "missing.key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        server_ssl_context(garbage, cert_files.key)
    other_cert, _ = ensure_self_signed(tmp_path / "other")
    with pytest.raises(CertificateError, match="cannot use certificate"):
        server_ssl_context(other_cert, cert_files.key)


async def _handshake(server_context, client_context) -> None:
    server_sock, client_sock = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(server_sock), server_context, server_side=True)
    client = trio.SSLStream(trio.SocketStream(client_sock), client_context)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    assert client.getpeercert(binary_form=True) is not None


async def test_server_context_speaks_tls12_and_up_only(cert_files):
    server_context = cert_files.server_context()
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    with trio.fail_after(10):
        await _handshake(server_context, cert_files.client_context())


async def test_agents_can_verify_it_as_a_ca_file(cert_files):
    from bridge.transport.tls import client_ssl_context

    context = client_ssl_context(ca_file=str(cert_files.cert))
    server_sock, client_sock = trio.socket.socketpair()
    server = trio.SSLStream(
        trio.SocketStream(server_sock), cert_files.server_context(), server_side=True
    )
    client = trio.SSLStream(trio.SocketStream(client_sock), context, server_hostname="localhost")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.do_handshake()
