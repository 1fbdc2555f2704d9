# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Real tunnels for tests: an in-process relay and agent(s) on 127.0.0.1 with a throwaway CA.

    async with open_bridge_tunnel(allow=["127.0.0.1:*"]) as tunnel:
        stream = await tunnel.connect("127.0.0.1", port)   # through relay, TLS, agent

Or, in a nursery that outlives the caller: ``tunnel = await nursery.start(serve_bridge_tunnel)``
(``functools.partial`` for the options). Leaving the block, or cancelling the nursery, stops
the relay and the agents and closes every socket. The pytest fixtures of
`relay.pytest_plugin` are built on this module.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.agent.agent import Agent, AgentConfig
from bridge.agent.allowlist import AllowList
from bridge.transport.tls import client_ssl_context
from relay import MemoryStore, Relay, RelayConfig
from relay.certificates import server_ssl_context, subject_alt_names
from relay.credentials import MIN_COST

__all__ = [
    "DEFAULT_ALLOW",
    "BridgeTunnel",
    "BridgeTunnelFactory",
    "ThrowawayCA",
    "open_bridge_tunnel",
    "open_bridge_tunnel_factory",
    "serve_bridge_tunnel",
]

#: What the agents of a test tunnel may dial unless told otherwise.
DEFAULT_ALLOW = ("127.0.0.1:*",)
_HOST = "127.0.0.1"


@attrs.frozen
class ThrowawayCA:
    """A CA made for one tunnel, and the relay certificate it signed (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)

    @classmethod
    def create(cls, hostnames: Sequence[str] = ("localhost", _HOST)) -> ThrowawayCA:
        """EC P-256 keys; the relay certificate covers ``hostnames`` and lasts a day."""
        now = datetime.datetime.now(datetime.UTC)
        ca_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        ca_name = _name("trio-bridge throwaway CA")
        ca = (
            _builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(  # signs certificates and CRLs only
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        sans = subject_alt_names(hostnames)
        cert = (
            _builder(_name(hostnames[0]), ca_name, key.public_key(), now)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(ca.public_bytes(pem), cert.public_bytes(pem), key_pem)

    @property
    def cert_der(self) -> bytes:
        """The relay certificate in DER form (what `certificate_fingerprint` hashes)."""
        return ssl.PEM_cert_to_DER_cert(self.cert_pem.decode())

    def write(self, directory: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
        """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``directory`` (which must
        exist) and return their paths in that order. Raises `OSError` if it cannot."""
        paths = tuple(Path(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
        for path, pem in zip(paths, (self.ca_pem, self.cert_pem, self.key_pem), strict=True):
            path.write_bytes(pem)
        return paths  # type: ignore[return-value]

    def ssl_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(relay server context, agent client context trusting only this CA), made the way
        the relay and the agent make them from files."""
        with tempfile.TemporaryDirectory(prefix="trio-bridge-") as directory:
            ca, cert, key = self.write(directory)
            return server_ssl_context(cert, key), client_ssl_context(ca_file=str(ca))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@attrs.define(eq=False)
class BridgeTunnel:
    """A running relay with one bridge and its connected agent(s).

    ``connect(host, port)`` opens a stream to host:port through the bridge, exactly as
    ``relay.connect`` does for a service embedding the relay.
    """

    relay: Relay
    agents: list[Agent]
    bridge_id: str
    bridge_name: str
    secret: str = attrs.field(repr=False)
    #: Where the relay listens for agents (``tls://127.0.0.1:PORT``).
    relay_url: str
    ca: ThrowawayCA = attrs.field(repr=False)

    @property
    def agent(self) -> Agent:
        """The first agent."""
        return self.agents[0]

    async def connect(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        """A stream to host:port through the bridge.

        Raises what `relay.Relay.connect` raises: `relay.TargetNotAllowed` (with the agent's
        message) for a target outside the allow-list, `relay.TargetUnreachable`, ...
        """
        return await self.relay.connect(self.bridge_id, host, port)


async def serve_bridge_tunnel(
    *,
    allow: AllowList | Iterable[str] = DEFAULT_ALLOW,
    agents: int = 1,
    bridge_name: str = "test-bridge",
    relay_config: RelayConfig | None = None,
    agent_config: AgentConfig | None = None,
    task_status: trio.TaskStatus[BridgeTunnel] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay on 127.0.0.1 (any free port) and ``agents`` agents of one bridge, all with
    the allow-list ``allow``, until cancelled. ``task_status.started`` gets the `BridgeTunnel`
    once every agent is connected and authenticated.

    The relay keeps its bridge in a `relay.MemoryStore`, hashed at the lowest bcrypt cost
    unless ``relay_config`` says otherwise. The agents behave as `bridge.Agent.run` does: a
    lost session is reconnected, and an agent the relay turns away (its bridge deleted or
    its secret rotated) raises out of here.
    """
    if agents < 1:
        raise ValueError(f"a tunnel needs at least one agent, not {agents}")
    allow = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
    relay_config = relay_config or RelayConfig(bcrypt_cost=MIN_COST)
    ca = ThrowawayCA.create()
    server_context, agent_context = ca.ssl_contexts()
    store = MemoryStore()
    bridge_id, secret = await trio.to_thread.run_sync(
        partial(store.create_bridge, bridge_name, cost=relay_config.bcrypt_cost)
    )
    relay = Relay(store, server_context, config=relay_config)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(relay.serve, _HOST, 0)
        relay_url = f"tls://{_HOST}:{listeners[0].socket.getsockname()[1]}"
        started = []
        for _ in range(agents):
            agent = Agent(relay_url, bridge_id, secret, allow, agent_context, config=agent_config)
            await nursery.start(agent.run)
            started.append(agent)
        task_status.started(
            BridgeTunnel(relay, started, bridge_id, bridge_name, secret, relay_url, ca)
        )


@asynccontextmanager
async def _background_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery cancelled when the block is left; an exception leaving the block (or a
    single background task failing) comes out as itself, not wrapped in an exception group."""
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def open_bridge_tunnel(**options) -> AsyncIterator[BridgeTunnel]:
    """`serve_bridge_tunnel` for the duration of an ``async with`` block (same options)."""
    async with _background_nursery() as nursery:
        yield await nursery.start(partial(serve_bridge_tunnel, **options))


@attrs.define(eq=False)
class BridgeTunnelFactory:
    """Starts tunnels in a nursery: ``await factory(allow=[...], agents=2)``; the options are
    those of `serve_bridge_tunnel`. Each call makes a new relay, bridge and agents."""

    nursery: trio.Nursery = attrs.field(repr=False)

    async def __call__(self, **options) -> BridgeTunnel:
        return await self.nursery.start(partial(serve_bridge_tunnel, **options))


@asynccontextmanager
async def open_bridge_tunnel_factory() -> AsyncIterator[BridgeTunnelFactory]:
    """A `BridgeTunnelFactory` whose tunnels all stop when the block is left."""
    async with _background_nursery() as nursery:
        yield BridgeTunnelFactory(nursery)
