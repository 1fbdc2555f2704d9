# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The PROXY protocol header (versions 1 and 2) a TCP load balancer sends first, carrying
the address of the client it accepted (sans-IO).

`parse_proxy_header` takes the bytes received so far and says whether they hold a whole
header, need more, or are not a valid header. Only TCP over IPv4 and IPv6 carries an
address; a LOCAL command (version 2, a load balancer's health check), `UNKNOWN` (version 1)
and the address-less families (AF_UNSPEC, AF_UNIX) give none: the connection's own address
stands. Version 2 TLVs are skipped. See https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress

import attrs

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 1 header, CRLF included, is at most this long (the specification's bound).
MAX_V1 = 107
#: The longest version 2 address block (addresses and TLVs) accepted; real load balancers
#: send well under this.
MAX_V2_PAYLOAD = 2048
#: The most bytes a header may take: longer input without a complete header is an error.
MAX_HEADER = 16 + MAX_V2_PAYLOAD

_V2_FAMILIES = {0x11: (4, 12), 0x21: (16, 36)}  # TCP over IPv4 / IPv6: address size, block size
_V2_ADDRESSLESS = {0x00, 0x31}  # AF_UNSPEC, AF_UNIX stream


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@attrs.frozen
class ProxyHeader:
    """A parsed header. `source` is the client's (ip, port); None when the header carries no
    address (LOCAL, UNKNOWN, or a family without one)."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def starts_like_proxy_header(first: bytes) -> bool:
    """Whether a connection's first byte(s) could begin a PROXY header (a TLS record cannot)."""
    return bool(first) and (V1_PREFIX.startswith(first[:6]) or V2_SIGNATURE.startswith(first[:12]))


def parse_proxy_header(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """(header, its length in bytes) when `data` starts with a whole header; None when more
    bytes are needed. Raises `ProxyHeaderError` as soon as `data` cannot start a valid header,
    or runs past `MAX_HEADER` bytes without completing one. Bytes after the header are not
    looked at."""
    data = bytes(data[:MAX_HEADER])
    if not data:
        return None
    if data[:1] == V1_PREFIX[:1]:
        return _v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _v2(data)
    raise ProxyHeaderError("not a PROXY protocol header")


def _v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1 or b"\n" in data[:MAX_V1]:
            raise ProxyHeaderError("PROXY v1 header without CRLF within 107 bytes")
        if any(not 0x20 <= b <= 0x7E for b in data if b != 0x0D):
            raise ProxyHeaderError("PROXY v1 header with non-printable characters")
        return None
    line = data[:end]
    if any(not 0x20 <= b <= 0x7E for b in line):
        raise ProxyHeaderError("PROXY v1 header with non-printable characters")
    parts = line.decode("ascii").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 header is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if parts[1] == "TCP4" else 6
    source = _v1_address(parts[2], parts[4], version)
    destination = _v1_address(parts[3], parts[5], version)
    return ProxyHeader(1, source, destination), end + 2


def _v1_address(host: str, port: str, version: int) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: invalid address {host[:50]!r}") from None
    if ip.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {host!r} is not an IPv{version} address")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ProxyHeaderError(f"PROXY v1 header: invalid port {port[:10]!r}")
    return str(ip), int(port)


def _v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyHeaderError("not a PROXY protocol header")
    if len(data) < 13:
        return None
    version_command = data[12]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of unsupported version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    if len(data) < 14:
        return None
    family = data[13]
    if family not in _V2_FAMILIES and family not in _V2_ADDRESSLESS:
        raise ProxyHeaderError(f"PROXY v2 header of unsupported family 0x{family:02x}")
    if len(data) < 16:
        return None
    length = int.from_bytes(data[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes, at most {MAX_V2_PAYLOAD}")
    if family in _V2_FAMILIES and length < _V2_FAMILIES[family][1]:
        raise ProxyHeaderError(f"PROXY v2 address block of {length} bytes is too short")
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0 or family in _V2_ADDRESSLESS:
        return ProxyHeader(2), total
    size = _V2_FAMILIES[family][0]
    block = data[16:total]
    source_ip = ipaddress.ip_address(block[:size])
    destination_ip = ipaddress.ip_address(block[size : 2 * size])
    ports = block[2 * size : 2 * size + 4]
    source = (str(source_ip), int.from_bytes(ports[:2], "big"))
    destination = (str(destination_ip), int.from_bytes(ports[2:], "big"))
    return ProxyHeader(2, source, destination), total


def encode_proxy_header(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None = None,
    *,
    version: int = 2,
) -> bytes:
    """A header announcing `source` (None: LOCAL for version 2, UNKNOWN for version 1), as a
    load balancer would send it. Raises ValueError for addresses of different families."""
    if source is None:
        if version == 1:
            return b"PROXY UNKNOWN\r\n"
        return V2_SIGNATURE + bytes([0x20, 0x00]) + b"\x00\x00"
    src_ip = ipaddress.ip_address(source[0])
    dst = destination or (("0.0.0.0" if src_ip.version == 4 else "::"), 0)
    dst_ip = ipaddress.ip_address(dst[0])
    if src_ip.version != dst_ip.version:
        raise ValueError("source and destination must both be IPv4 or both IPv6")
    if version == 1:
        proto = "TCP4" if src_ip.version == 4 else "TCP6"
        return f"PROXY {proto} {src_ip} {dst_ip} {source[1]} {dst[1]}\r\n".encode()
    family = 0x11 if src_ip.version == 4 else 0x21
    block = src_ip.packed + dst_ip.packed + source[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big")
    return V2_SIGNATURE + bytes([0x21, family]) + len(block).to_bytes(2, "big") + block
