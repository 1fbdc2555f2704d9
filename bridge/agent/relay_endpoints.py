# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The relay addresses the agent tries in one round, and their order.

A relay of several nodes is given as a list of URLs, and a host name that resolves to several
addresses counts as several relays. Each round of connection attempts is built the way
libpq's ``load_balance_hosts=random`` and gRPC's ``pick_first`` with a shuffled address list
build theirs, with the backoff where gRPC's connection backoff puts it:

- every URL's host is resolved anew at each round (a changed DNS record is seen at the next
  one), and all the addresses, of every URL, are shuffled together: a fleet of agents spreads
  over the nodes, and a node with two addresses is not favoured over one with one;
- the address whose session was just lost goes last (`order_endpoints`), so the agents of a
  node that died try the others first instead of waiting on its connect timeout;
- the agent tries the addresses one after the other and moves on at once when one fails; it
  waits the backoff delay (`bridge.agent.backoff`) only when a whole round failed, and after a
  session ends (the first delay under 1 s after a healthy one), so that the agents of a node
  that died come back to the others spread out rather than in one wave.

A URL reached through an HTTP proxy is one endpoint: the proxy resolves its name. An IP
address is its own single endpoint. The addresses a relay advertises for its nodes (the
"nodes" capability) are endpoints too, dialed at their own host and port but verified as the
URL of the session that told them (`advertised_endpoint`).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable

import attrs
import trio

from bridge.agent.relay_url import RelayURL
from bridge.protocol.addresses import format_host_port
from bridge.transport.http_proxy import ProxyURL

#: At most this many addresses of one name are used (a round stays bounded in time).
MAX_ADDRESSES_PER_NAME = 16


@attrs.frozen
class RelayEndpoint:
    """One address to try: the relay URL (its host is the TLS name, and the WebSocket Host
    for wss://), the address to dial (None: the URL's host, by name; an address a relay
    advertised may be a name too), the HTTP proxy to go through, if any, and the port to
    dial when it is not the URL's (an advertised address)."""

    url: RelayURL
    ip: str | None = None
    proxy: ProxyURL | None = None
    port: int | None = None

    @property
    def dial_host(self) -> str:
        """What TCP connects to: the resolved (or advertised) address, or the URL's host."""
        return self.ip or self.url.host

    @property
    def dial_port(self) -> int:
        """The port TCP connects to: `port`, or the URL's."""
        return self.port or self.url.port

    @property
    def address(self) -> str:
        """The URL's ``host:port``, or for an advertised address, that one."""
        if self.dial_port != self.url.port:
            return format_host_port(self.dial_host, self.dial_port)
        return self.url.address

    @property
    def key(self) -> tuple[str, str, int, str, bool]:
        """Endpoints with equal keys are the same relay reached the same way."""
        url = self.url
        return (url.scheme, self.dial_host, self.dial_port, url.path, self.proxy is not None)

    def log_fields(self) -> dict[str, str]:
        """The URL's ``host:port`` as ``address``, and the address dialed as ``ip`` when it
        is not that: a resolved name's address, or an advertised ``host:port``."""
        if self.dial_port != self.url.port:
            return {
                "address": self.url.address,
                "ip": format_host_port(self.dial_host, self.dial_port),
            }
        if self.ip is None or self.ip == self.url.host:
            return {"address": self.url.address}
        return {"address": self.url.address, "ip": self.ip}


def advertised_endpoint(told: RelayEndpoint, host: str, port: int) -> RelayEndpoint | None:
    """The endpoint of an address (``host``, ``port``: a node's agent port, dialed with TLS)
    that the relay reached at ``told`` advertised: dialed there, through ``told``'s proxy,
    and verified exactly as ``told``'s URL (its host is the TLS name). None for a wss://
    URL: advertised addresses are agent ports, not WebSocket listeners."""
    if told.url.scheme != "tls":
        return None
    return RelayEndpoint(told.url, host, told.proxy, port)


def order_endpoints(
    endpoints: Iterable[RelayEndpoint],
    rng: random.Random,
    *,
    last: RelayEndpoint | None = None,
) -> list[RelayEndpoint]:
    """The order of one round: duplicates (equal `RelayEndpoint.key`) kept once, shuffled,
    and ``last`` (the endpoint whose session was just lost), if present, moved to the end."""
    first: dict[tuple[str, str, int, str, bool], RelayEndpoint] = {}
    for endpoint in endpoints:
        first.setdefault(endpoint.key, endpoint)
    unique = list(first.values())
    rng.shuffle(unique)
    if last is not None:
        unique.sort(key=lambda endpoint: endpoint.key == last.key)  # stable: the rest stays
    return unique


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_endpoints(url: RelayURL, proxy: ProxyURL | None) -> list[RelayEndpoint]:
    """The endpoints of ``url``: one through ``proxy`` when given (the proxy resolves the
    name), one for an IP address, else one per address the name resolves to (IPv4 and IPv6,
    at most MAX_ADDRESSES_PER_NAME, in the resolver's order).

    Raises OSError (`socket.gaierror`) or UnicodeError when the name does not resolve; it has
    no time limit of its own (bound it with a cancel scope).
    """
    if proxy is not None:
        return [RelayEndpoint(url, None, proxy)]
    if is_ip_address(url.host):
        return [RelayEndpoint(url, url.host)]
    infos = await trio.socket.getaddrinfo(
        url.host, url.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    unique = list(dict.fromkeys(addresses))[:MAX_ADDRESSES_PER_NAME]
    if not unique:
        raise OSError(f"{url.host} has no IPv4 or IPv6 address")
    return [RelayEndpoint(url, address) for address in unique]
