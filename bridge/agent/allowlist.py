# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent's allow-list: which targets the relay may ask it to dial.

Entries: ``host:port``, ``ip:port``, ``[v6]:port``, ``CIDR:port`` (``[v6/len]:port`` for IPv6),
with ``*`` for any port. A hostname rule matches the requested name (case-insensitive); IP and
CIDR rules match the addresses the name resolved to. The agent dials only addresses that the
check let through, so what was checked is exactly what is dialed.

Which names the agent resolves for IP and CIDR rules is `AllowList.resolve_names` (patterns,
``--resolve-names``): by default any name, which lets whoever controls the relay ask the
agent's DNS about any name (a lookup oracle into internal DNS); with patterns, a name no
hostname rule names is resolved only if a pattern matches it.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs

from bridge.protocol.addresses import format_host_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def normalize_host(host: str) -> str:
    """Lower case without a trailing dot: how hostnames are compared."""
    return host.lower().removesuffix(".")


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # a mistyped IP address, not a name
    )


@functools.lru_cache(maxsize=1024)  # every tunnel checks its target: parse each once
def _address(text: str) -> IPAddress | None:
    """An IP address without its zone; IPv4-mapped IPv6 as IPv4. None if not an address."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class Rule:
    """One entry. Exactly one of ``hostname`` and ``network`` is set; ``port`` None means any."""

    hostname: str | None
    network: IPNetwork | None
    port: int | None

    def __str__(self) -> str:
        port = "*" if self.port is None else str(self.port)
        if self.hostname is not None:
            return f"{self.hostname}:{port}"
        assert self.network is not None
        net = self.network
        host = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        return format_host_port(host, port)

    def matches_port(self, port: int) -> bool:
        """Whether the rule covers `port` (a ``*`` rule covers every port)."""
        return self.port is None or self.port == port

    @classmethod
    def parse(cls, entry: str) -> Rule:
        """One allow-list entry: ``HOST:PORT``, ``IP:PORT``, ``[IPV6]:PORT`` or ``CIDR:PORT``, with
        ``*`` for any port. Raises ValueError with a one-line message saying what is wrong."""
        text = entry.strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            ipv6 = True
        else:
            host, sep, port = text.rpartition(":")
            ipv6 = False
        if not sep or not host:
            raise ValueError(
                f"invalid allow-list entry {entry!r}: expected HOST:PORT, IP:PORT, [IPv6]:PORT "
                "or CIDR:PORT, with * for any port"
            )
        return cls(*_parse_host(entry, host, ipv6), _parse_port(entry, port))


def _parse_port(entry: str, text: str) -> int | None:
    if text == "*":
        return None
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(f"invalid allow-list entry {entry!r}: port must be 1..65535 or *")
    return int(text)


def _parse_host(entry: str, host: str, ipv6: bool) -> tuple[str | None, IPNetwork | None]:
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError(f"invalid allow-list entry {entry!r}: bad CIDR {host!r}") from None
        if (network.version == 6) != ipv6:
            raise ValueError(
                f"invalid allow-list entry {entry!r}: write IPv6 as [ADDRESS]:PORT or [CIDR]:PORT"
            )
        return None, network
    address = _address(host) if host.isascii() else None
    if address is not None and "%" not in host:
        if (":" in host) != ipv6:
            raise ValueError(
                f"invalid allow-list entry {entry!r}: write IPv6 as [ADDRESS]:PORT or [CIDR]:PORT"
            )
        return None, ipaddress.ip_network(address)
    name = normalize_host(host)
    if ipv6 or not host.isascii() or not _is_hostname(name):
        raise ValueError(f"invalid allow-list entry {entry!r}: bad host {host!r}")
    return name, None


_PATTERN = re.compile(r"[a-z0-9_.*?-]{1,253}")


def parse_name_patterns(entries: Iterable[str]) -> tuple[str, ...]:
    """``--resolve-names`` entries: shell-style patterns (``*.corp.example``, ``db-?``) matched
    case-insensitively against whole names; ``*`` matches dots too. Raises ValueError."""
    patterns = []
    for entry in entries:
        pattern = normalize_host(entry.strip())
        if not pattern:
            continue
        if not _PATTERN.fullmatch(pattern):
            raise ValueError(
                f"invalid name pattern {entry!r}: use letters, digits, '.', '-', '_', '*' and '?'"
            )
        patterns.append(pattern)
    if not patterns:
        raise ValueError("no name patterns given")
    return tuple(patterns)


@attrs.frozen
class AllowList:
    """Parsed rules; ``allow_any`` lets every target through (``--allow-any``).

    ``resolve_names``: the names that may be resolved for IP and CIDR rules (patterns, see
    `parse_name_patterns`); None: any name.
    """

    rules: tuple[Rule, ...] = ()
    allow_any: bool = False
    resolve_names: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Raises ValueError naming the first bad entry. Blank entries are skipped."""
        return cls(tuple(Rule.parse(entry) for entry in entries if entry.strip()))

    @classmethod
    def any(cls) -> AllowList:
        """An allow-list that allows every host and port (``--allow-any``)."""
        return cls(allow_any=True)

    def __bool__(self) -> bool:
        return self.allow_any or bool(self.rules)

    def __str__(self) -> str:
        return "*" if self.allow_any else ",".join(map(str, self.rules))

    def allows_name(self, host: str, port: int) -> bool:
        """A hostname rule matches ``host:port`` (so every address it resolves to may be dialed)."""
        name = normalize_host(host)
        return self.allow_any or any(
            rule.hostname == name and rule.matches_port(port) for rule in self.rules
        )

    def allows_address(self, address: str, port: int) -> bool:
        """An IP or CIDR rule covers ``address`` (an IP literal, maybe with a %zone) and
        ``port``."""
        if self.allow_any:
            return True
        ip = _address(address)
        return ip is not None and any(
            rule.network is not None and ip in rule.network and rule.matches_port(port)
            for rule in self.rules
        )

    def may_resolve(self, host: str) -> bool:
        """Whether ``host`` may be resolved to be checked against IP and CIDR rules: an IP
        literal always, a name if `resolve_names` lets it."""
        if self.resolve_names is None or _address(host) is not None:
            return True
        name = normalize_host(host)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.resolve_names)

    def may_allow(self, host: str, port: int) -> bool:
        """False when no rule could let ``host:port`` through whatever it resolves to, or
        when the host is a name only IP or CIDR rules could allow and `resolve_names` does
        not let the agent resolve it.

        Lets the agent refuse without a DNS lookup.
        """
        return self.allows_name(host, port) or (
            any(rule.network is not None and rule.matches_port(port) for rule in self.rules)
            and self.may_resolve(host)
        )

    def allowed_addresses(self, host: str, port: int, addresses: Sequence[str]) -> list[str]:
        """The resolved ``addresses`` of ``host`` that may be dialed on ``port``, in order.

        All of them when a hostname rule matches ``host``; otherwise those covered by an IP
        or CIDR rule. Empty means the target is not allowed.
        """
        if self.allows_name(host, port):
            return list(addresses)
        return [a for a in addresses if self.allows_address(a, port)]
