# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import hashlib
import ssl
from functools import partial

import pytest
import trio

from bridge.transport.tls import (
    FingerprintMismatch,
    PinnedSSLContext,
    certificate_fingerprint,
    check_fingerprint,
    client_ssl_context,
    parse_fingerprint,
)

DIGEST = bytes(range(32))


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + DIGEST.hex(),
        "SHA256:" + DIGEST.hex().upper(),
        "sha256:" + ":".join(f"{b:02x}" for b in DIGEST),
        "  sha256:" + DIGEST.hex() + "\n",
    ],
)
def test_parse_fingerprint(text):
    assert parse_fingerprint(text) == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        DIGEST.hex(),
        "sha1:" + DIGEST.hex()[:40],
        "sha256:" + DIGEST.hex()[:-2],
        "sha256:" + "zz" * 32,
        "sha256:" + DIGEST.hex() + "00",
        "sha256::" + DIGEST.hex(),
    ],
)
def test_parse_fingerprint_rejects(text):
    with pytest.raises(ValueError, match="sha256: followed by 64 hex digits"):
        parse_fingerprint(text)


def test_certificate_fingerprint(certificates):
    expected = "sha256:" + hashlib.sha256(certificates.cert_der).hexdigest()
    assert certificate_fingerprint(certificates.cert_der) == expected
    assert parse_fingerprint(expected) == hashlib.sha256(certificates.cert_der).digest()


def test_contexts_are_tls12_plus_and_verify():
    default = client_ssl_context()
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    pinned = client_ssl_context(fingerprint="sha256:" + DIGEST.hex())
    assert isinstance(pinned, PinnedSSLContext) and pinned.fingerprint == DIGEST
    assert pinned.minimum_version == ssl.TLSVersion.TLSv1_2


def test_ca_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read CA file .*missing.pem: No such file"):
        client_ssl_context(ca_file=str(tmp_path / "missing.pem"))
    for content in (b"", b"not a certificate", b"\xff\xfe"):
        (tmp_path / "bad.pem").write_bytes(content)
        with pytest.raises(ValueError, match="bad.pem"):
            client_ssl_context(ca_file=str(tmp_path / "bad.pem"))
    with pytest.raises(ValueError, match="not both"):
        client_ssl_context(ca_file="x", fingerprint=DIGEST)


async def handshake(certificates, client_context, server_hostname="localhost"):
    """TLS over a real loopback connection; returns the client's SSLStream."""
    server_context = certificates.server_context()

    async def serve(stream):
        server = trio.SSLStream(stream, server_context, server_side=True)
        try:
            await server.do_handshake()
        except trio.BrokenResourceError:
            pass
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        client = trio.SSLStream(tcp, client_context, server_hostname=server_hostname)
        try:
            with trio.fail_after(10):
                await client.do_handshake()
        except trio.BrokenResourceError as exc:
            error = exc
        else:
            error = None
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return client


async def test_ca_file_verifies_the_relay(certificates):
    client = await handshake(certificates, client_ssl_context(ca_file=certificates.ca_file))
    assert client.getpeercert(binary_form=True) == certificates.cert_der


async def test_system_cas_refuse_a_private_ca(certificates):
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake(certificates, client_ssl_context())
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_hostname_is_checked(certificates):
    with pytest.raises(trio.BrokenResourceError):
        await handshake(
            certificates, client_ssl_context(ca_file=certificates.ca_file), "relay.example.com"
        )


async def test_fingerprint_pin(certificates):
    good = certificate_fingerprint(certificates.cert_der)
    client = await handshake(certificates, client_ssl_context(fingerprint=good), None)
    check_fingerprint(client, parse_fingerprint(good))
    with pytest.raises(FingerprintMismatch) as info:
        check_fingerprint(client, DIGEST)
    assert (
        str(info.value)
        == f"relay certificate {good} does not match the pinned sha256:{DIGEST.hex()}"
    )
