# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.agent.allowlist import AllowList, Rule


@pytest.mark.parametrize(
    "entry, hostname, network, port",
    [
        ("localhost:5432", "localhost", None, 5432),
        ("DB.Internal.:5432", "db.internal", None, 5432),
        ("internal_server:1234", "internal_server", None, 1234),
        ("db:*", "db", None, None),
        ("10.0.0.5:5432", None, "10.0.0.5/32", 5432),
        ("10.0.0.0/8:*", None, "10.0.0.0/8", None),
        ("10.1.2.3/8:80", None, "10.0.0.0/8", 80),
        ("[::1]:22", None, "::1/128", 22),
        ("[fd00::/8]:443", None, "fd00::/8", 443),
        ("  db:5432  ", "db", None, 5432),
    ],
)
def test_parse_entries(entry, hostname, network, port):
    (rule,) = AllowList.parse([entry]).rules
    assert rule.hostname == hostname
    assert rule.network == (None if network is None else ipaddress.ip_network(network))
    assert rule.port == port


def test_str_round_trips():
    entries = ["localhost:5432", "10.0.0.0/8:*", "[::1]:22", "[fd00::/8]:443", "1.2.3.4:80"]
    allow = AllowList.parse(entries)
    assert str(allow) == ",".join(entries)
    assert AllowList.parse(str(allow).split(",")) == allow
    assert str(AllowList.any()) == "*"


@pytest.mark.parametrize(
    "entry",
    [
        "x",
        "db:",
        ":80",
        "db:0",
        "db:65536",
        "db:-1",
        "db:+1",
        "db:٣",
        "db:1.5",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[db]:80",
        "[10.0.0.1]:80",
        "fd00::/8:443",
        "10.0.0.0/33:1",
        "a b:1",
        "-db:1",
        "db-:1",
        "db..x:1",
        "10.0.0.256:80",
        "*:80",
        "fe80::1%eth0:80",
        "[fe80::1%eth0]:80",
        "dé:80",
        "x" * 254 + ":1",
    ],
)
def test_bad_entries_name_the_entry(entry):
    with pytest.raises(ValueError, match="invalid allow-list entry") as info:
        AllowList.parse(["db:5432", entry])
    assert repr(entry.strip()) in str(info.value) or repr(entry) in str(info.value)
    assert "\n" not in str(info.value)


def test_blank_entries_are_skipped_and_empty_is_falsy():
    assert AllowList.parse(["", " ", "db:1"]).rules == (Rule("db", None, 1),)
    assert not AllowList.parse([])
    assert AllowList.any()


ALLOW = AllowList.parse(
    ["localhost:5432", "db.internal:*", "10.0.0.0/8:5432", "[fd00::/8]:443", "192.168.1.5:80"]
)


def test_hostname_rule_matches_by_name_and_allows_every_resolved_address():
    assert ALLOW.allowed_addresses("localhost", 5432, ["::1", "127.0.0.1"]) == ["::1", "127.0.0.1"]
    assert ALLOW.allowed_addresses("LOCALHOST.", 5432, ["127.0.0.1"]) == ["127.0.0.1"]
    assert ALLOW.allowed_addresses("db.internal", 1, ["203.0.113.9"]) == ["203.0.113.9"]


def test_hostname_rule_needs_the_port():
    assert ALLOW.allowed_addresses("localhost", 5433, ["127.0.0.1"]) == []


def test_address_of_a_hostname_rule_is_not_allowed_by_address():
    assert ALLOW.allowed_addresses("127.0.0.1", 5432, ["127.0.0.1"]) == []


def test_ip_rules_check_each_resolved_address():
    addresses = ["10.1.2.3", "11.0.0.1", "::ffff:10.9.9.9", "fd00::5"]
    assert ALLOW.allowed_addresses("anything", 5432, addresses) == ["10.1.2.3", "::ffff:10.9.9.9"]
    assert ALLOW.allowed_addresses("anything", 443, addresses) == ["fd00::5"]
    assert ALLOW.allowed_addresses("192.168.1.5", 80, ["192.168.1.5"]) == ["192.168.1.5"]
    assert ALLOW.allowed_addresses("192.168.1.6", 80, ["192.168.1.6"]) == []


def test_zone_is_ignored_for_matching():
    allow = AllowList.parse(["[fe80::/10]:22"])
    assert allow.allows_address("fe80::1%eth0", 22)


def test_may_allow_refuses_without_dns_when_nothing_could_match():
    assert ALLOW.may_allow("localhost", 5432)
    assert ALLOW.may_allow("somewhere", 5432)  # 10.0.0.0/8:5432 could match its addresses
    assert not ALLOW.may_allow("somewhere", 22)
    assert not AllowList.parse(["db:5432"]).may_allow("other", 5432)


def test_allow_any():
    allow = AllowList.any()
    assert allow.may_allow("x", 1)
    assert allow.allowed_addresses("x", 1, ["1.2.3.4", "::1"]) == ["1.2.3.4", "::1"]


def test_non_address_is_never_allowed_by_ip_rule():
    assert not AllowList.parse(["0.0.0.0/0:*"]).allows_address("not-an-ip", 1)


@given(st.lists(st.text(max_size=40), max_size=5))
def test_parser_on_garbage_raises_only_value_error(entries):
    try:
        allow = AllowList.parse(entries)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert AllowList.parse(str(allow).split(",")) == allow if allow else True


@given(st.text(alphabet="0123456789abcdef.:/[]*-x", max_size=30))
def test_parser_on_address_like_garbage(entry):
    try:
        AllowList.parse([entry])
    except ValueError:
        pass


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_any_address_rule_matches_itself(address, port):
    host = f"[{address}]" if address.version == 6 else str(address)
    allow = AllowList.parse([f"{host}:{port}"])
    mapped = getattr(address, "ipv4_mapped", None)
    assert allow.allows_address(str(mapped or address), port)
    assert not allow.allows_address(str(address), port % 65535 + 1)
