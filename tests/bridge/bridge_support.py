# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Helpers of the bridge tests: a throwaway CA, a minimal relay, TCP targets."""

from __future__ import annotations

import datetime
import ipaddress
import math
import ssl
from functools import partial

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import mux
from bridge.protocol.connect import (
    ConnectReply,
    ConnectReplyParser,
    ConnectRequest,
    encode_connect_request,
)
from bridge.protocol.handshake import Hello, HelloParser, Welcome, WelcomeStatus, encode_welcome
from bridge.transport.prefixed_stream import PrefixedStream
from bridge.transport.tls_stream import TLSStream


@attrs.frozen
class Certificates:
    """A throwaway CA and a relay certificate it signed for localhost and 127.0.0.1."""

    ca_file: str
    cert_file: str
    key_file: str
    cert_der: bytes

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory) -> Certificates:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("trio-bridge test CA"))
        .issuer_name(_name("trio-bridge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: directory / name for name in ("ca.pem", "cert.pem", "key.pem")}
    paths["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key.pem"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificates(
        str(paths["ca.pem"]),
        str(paths["cert.pem"]),
        str(paths["key.pem"]),
        cert.public_bytes(serialization.Encoding.DER),
    )


BRIDGE_ID = "0db4d173-a5ba-4be9-ae26-beab2f2875ee"
SECRET = "gG8x2PnNTJzDcY0bR9q8WcLq1kq0mQy6YJm2Y3cW4ZA"


@attrs.define
class Tunnel:
    """The relay's end of one tunneled connection."""

    stream: mux.Stream
    reply: ConnectReply
    leftover: bytes


class FakeRelay:
    """The relay side of the protocol on 127.0.0.1, just enough to drive an agent.

    ``welcome(hello)`` decides the answer (default: OK for BRIDGE_ID/SECRET, else
    AUTH_FAILED); authenticated sessions are handed out by `next_session`.
    """

    def __init__(self, certificates: Certificates) -> None:
        self.context = certificates.server_context()
        self.port = 0
        self.hellos: list[Hello] = []
        self.connections = 0
        self.welcome = self.check_credentials
        self._send, self._receive = trio.open_memory_channel[mux.Session](math.inf)

    @staticmethod
    def check_credentials(hello: Hello) -> Welcome:
        if (hello.bridge_id, hello.secret) == (BRIDGE_ID, SECRET):
            return Welcome(WelcomeStatus.OK)
        return Welcome(WelcomeStatus.AUTH_FAILED, "invalid bridge credentials")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        tls = TLSStream.wrap(tcp, self.context, server_side=True)
        async with tls:
            try:
                await tls.do_handshake()
                parser = HelloParser()
                while (hello := parser.feed(data := await tls.receive_some())) is None:
                    if not data:
                        return
            except trio.BrokenResourceError:
                return
            self.hellos.append(hello)
            welcome = self.welcome(hello)
            await tls.send_all(encode_welcome(welcome))
            if welcome.status != WelcomeStatus.OK:
                return
            async with mux.open_session(
                PrefixedStream(tls, parser.leftover), client=False
            ) as session:
                self._send.send_nowait(session)
                try:
                    async for stream in session:  # the agent opens none; wait for the end
                        stream.reset()
                except mux.SessionClosed:
                    pass

    async def next_session(self) -> mux.Session:
        with trio.fail_after(10):
            return await self._receive.receive()

    @staticmethod
    async def open(session: mux.Session, host: str, port: int, early: bytes = b"") -> Tunnel:
        """Open a stream and ask the agent for ``host:port``; returns once it replied."""
        stream = await session.open_stream()
        await stream.send_all(encode_connect_request(ConnectRequest(host, port)) + early)
        parser = ConnectReplyParser()
        with trio.fail_after(10):
            while (reply := parser.feed(data := await stream.receive_some())) is None:
                assert data, "stream ended before the connect reply"
        return Tunnel(stream, reply, parser.leftover)


async def echo(stream: trio.SocketStream) -> None:
    """Echo until EOF, then close."""
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


async def serve(nursery, handler) -> int:
    """Run a TCP server on 127.0.0.1; returns its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]
