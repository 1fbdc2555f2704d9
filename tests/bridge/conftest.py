# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0


import pytest

from bridge.agent.agent import Agent, AgentConfig
from bridge.transport.tls import client_ssl_context

from .bridge_support import BRIDGE_ID, SECRET, Certificates, FakeRelay, make_certificates


@pytest.fixture(scope="session")
def certificates(tmp_path_factory) -> Certificates:
    """A throwaway CA and a relay certificate for localhost and 127.0.0.1."""
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def relay(nursery, certificates) -> FakeRelay:
    """A minimal relay on 127.0.0.1 that accepts BRIDGE_ID / SECRET."""
    relay = FakeRelay(certificates)
    await nursery.start(relay.serve)
    return relay


@pytest.fixture
def make_agent(relay, certificates):
    """Builds agents for the relay fixture:
    ``make_agent(allow, secret=..., ssl_context=..., **config)``."""

    def make(allow=("127.0.0.1:*",), *, secret=SECRET, ssl_context=None, **config) -> Agent:
        context = ssl_context or client_ssl_context(ca_file=certificates.ca_file)
        url = f"tls://127.0.0.1:{relay.port}"
        return Agent(url, BRIDGE_ID, secret, allow, context, config=AgentConfig(**config))

    return make
