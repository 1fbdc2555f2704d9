# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Control messages: the relay's list of its nodes ("nodes" capability), read defensively."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.agent.relay_endpoints import RelayEndpoint, advertised_endpoint
from bridge.agent.relay_url import RelayURL
from bridge.protocol.control import (
    MAX_CONTROL,
    MAX_NODES,
    NODES,
    AdvertisedNode,
    ControlError,
    ControlMessage,
    ControlParser,
    advertised_nodes,
    encode_control,
)


def _read(fields: dict) -> ControlMessage:
    """The message as the agent reads it off the control stream."""
    (message,) = ControlParser().feed(encode_control(ControlMessage(NODES, fields)))
    return message


def test_nodes_round_trip():
    nodes = [AdvertisedNode("relay1", "10.0.0.1", 4000), AdvertisedNode("relay2", "::1", 4001)]
    data = encode_control(ControlMessage.nodes(nodes))
    assert json.loads(data[2:]) == {
        "nodes": [
            {"node": "relay1", "address": "10.0.0.1:4000"},
            {"node": "relay2", "address": "[::1]:4001"},
        ],
        "type": "nodes",
    }
    (message,) = ControlParser().feed(data)
    assert advertised_nodes(message) == tuple(nodes)


def test_a_worker_names_its_host_and_older_agents_need_not_know():
    nodes = [
        AdvertisedNode("edge/worker-0.3", "10.0.0.1", 4000, "edge"),
        AdvertisedNode("relay2", "10.0.0.2", 4000),
    ]
    message = ControlMessage.nodes(nodes)
    assert message.fields["nodes"] == [
        {"node": "edge/worker-0.3", "address": "10.0.0.1:4000", "host": "edge"},
        {"node": "relay2", "address": "10.0.0.2:4000"},
    ]
    assert advertised_nodes(_read(message.fields)) == tuple(nodes)
    # What an agent that does not know the key reads: the node and its address.
    older = [{k: v for k, v in e.items() if k != "host"} for e in message.fields["nodes"]]
    assert advertised_nodes(_read({"nodes": older}))[0] == AdvertisedNode(
        "edge/worker-0.3", "10.0.0.1", 4000
    )


def test_the_relay_leaves_out_what_an_agent_would_refuse():
    nodes = [
        AdvertisedNode("n" * 256, "10.0.0.1", 4000),
        AdvertisedNode("ok", "10.0.0.2", 4000),
        AdvertisedNode("w", "10.0.0.3", 4000, "h" * 256),  # the host is left out
    ]
    sent = advertised_nodes(_read(ControlMessage.nodes(nodes).fields))
    assert sent == (nodes[1], AdvertisedNode("w", "10.0.0.3", 4000))


def test_the_relay_sends_what_fits_first_nodes_first():
    long = "n" * 255
    nodes = [AdvertisedNode(f"{long}{i}"[-255:], f"h{i}.example", 4000) for i in range(40)]
    message = ControlMessage.nodes(nodes)
    sent = advertised_nodes(message)
    assert 0 < len(sent) <= MAX_NODES and list(sent) == nodes[: len(sent)]
    assert len(encode_control(message)) <= 2 + MAX_CONTROL


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "not a list"),
        ({"nodes": {"relay1": "10.0.0.1:4000"}}, "not a list"),
        ({"nodes": [{"node": "n", "address": "h:1"}] * (MAX_NODES + 1)}, "more than"),
        ({"nodes": ["relay1=10.0.0.1:4000"]}, "entry 1 is not an object"),
        ({"nodes": [{"address": "10.0.0.1:4000"}]}, "no node name"),
        ({"nodes": [{"node": "", "address": "10.0.0.1:4000"}]}, "no node name"),
        ({"nodes": [{"node": "é" * 128, "address": "10.0.0.1:4000"}]}, "no node name"),
        ({"nodes": [{"node": 7, "address": "10.0.0.1:4000"}]}, "no node name"),
        ({"nodes": [{"node": "n"}]}, "no address"),
        ({"nodes": [{"node": "n", "address": ["10.0.0.1", 4000]}]}, "no address"),
        ({"nodes": [{"node": "n", "address": "a" * 300 + ":1"}]}, "no address"),
        ({"nodes": [{"node": "n", "address": "10.0.0.1"}]}, "port is missing"),
        ({"nodes": [{"node": "n", "address": "10.0.0.1:0"}]}, "port must be"),
        ({"nodes": [{"node": "n", "address": "10.0.0.1:65536"}]}, "port must be"),
        ({"nodes": [{"node": "n", "address": "::1:4000"}]}, "brackets"),
        ({"nodes": [{"node": "n", "address": "evil host:4000"}]}, "not a hostname"),
        ({"nodes": [{"node": "n", "address": "h\x00:4000"}]}, "not a hostname"),
        ({"nodes": [{"node": "n", "address": "h:1", "host": ""}]}, "entry 1 has a host"),
        ({"nodes": [{"node": "n", "address": "h:1", "host": "h" * 256}]}, "entry 1 has a host"),
        ({"nodes": [{"node": "n", "address": "h:1", "host": ["edge"]}]}, "entry 1 has a host"),
        # One good entry does not save a list with a bad one.
        ({"nodes": [{"node": "n", "address": "h:1"}, None]}, "entry 2 is not an object"),
    ],
)
def test_a_hostile_list_is_refused_whole_with_a_reason(fields, match):
    with pytest.raises(ControlError, match=match):
        advertised_nodes(_read(fields))


def test_unknown_keys_are_ignored_and_repeats_kept_once():
    entry = {"node": "relay1", "address": "relay1.internal:4000", "weight": 3}
    message = _read({"nodes": [entry, entry], "epoch": 9})
    assert advertised_nodes(message) == (AdvertisedNode("relay1", "relay1.internal", 4000),)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "node": json_values | st.text(max_size=300),
                "address": json_values | st.from_regex(r"\[?[\w.:%-]{0,40}\]?:\d{0,6}"),
                "host": json_values | st.text(max_size=300),
            },
        )
        | json_values,
        max_size=40,
    )
)
def test_any_list_is_read_or_refused_never_a_crash(entries):
    try:
        nodes = advertised_nodes(ControlMessage(NODES, {"nodes": entries}))
    except ControlError:
        return
    assert len(nodes) <= MAX_NODES
    for node in nodes:
        assert 0 < len(node.node.encode()) <= 255 and 1 <= node.port <= 65535
        assert node.host_node is None or 0 < len(node.host_node.encode()) <= 255


def test_an_advertised_address_is_verified_as_the_url_that_told_it():
    told = RelayEndpoint(RelayURL.parse("tls://relay.example.com:4000"), "192.0.2.1")
    learned = advertised_endpoint(told, "192.0.2.7", 4400)
    assert learned is not None
    # Dialed at the advertised address; the TLS name stays the configured URL's host.
    assert (learned.dial_host, learned.dial_port) == ("192.0.2.7", 4400)
    assert learned.url.host == "relay.example.com"
    assert learned.address == "192.0.2.7:4400" and learned.key != told.key
    assert learned.log_fields() == {"address": "relay.example.com:4000", "ip": "192.0.2.7:4400"}
    # Agent ports are not WebSocket listeners: a wss:// agent keeps to its URLs.
    websocket = RelayEndpoint(RelayURL.parse("wss://relay.example.com"))
    assert advertised_endpoint(websocket, "192.0.2.7", 4400) is None
