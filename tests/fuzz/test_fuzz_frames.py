# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The yamux frame decoder (`mux.Connection.receive_data`) under generated input: raw bytes,
and streams of frames built from interesting header values so that deep states are reached.
Only `RemoteProtocolError` may escape; see fuzz_targets.check_frames for the invariants."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz_targets import check_frames, frames_from_bytes

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cuts = st.lists(st.integers(0, 1 << 16), max_size=8)

stream_ids = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 2**31, 2**32 - 1]) | st.integers(
    0, 2**32 - 1
)
lengths = st.sampled_from([0, 1, 100, 1024, 256 * 1024, 256 * 1024 + 1, 2**31, 2**32 - 1])


@st.composite
def frame(draw) -> bytes:
    version = draw(st.sampled_from([0] * 15 + [1, 255]))
    kind = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3, 4, 255]))
    flags = draw(st.integers(0, 15) | st.sampled_from([16, 0xFFFF]))
    stream_id = draw(stream_ids)
    if kind == 0:
        payload = draw(st.binary(max_size=300))
        # Mostly the declared length; sometimes a frame cut short or a lie about its size.
        length = draw(st.sampled_from([len(payload)] * 6) | lengths)
        return struct.pack(">BBHII", version, kind, flags, stream_id, length) + payload
    return struct.pack(">BBHII", version, kind, flags, stream_id, draw(lengths | st.integers(0, 9)))


@SETTINGS
@given(st.binary(max_size=2000), cuts, st.booleans(), st.booleans())
def test_raw_bytes(wire, cuts, client, react):
    check_frames(wire, cuts, client=client, react=react)


@SETTINGS
@given(st.lists(frame(), max_size=30), cuts, st.booleans(), st.booleans())
def test_frame_sequences(frames, cuts, client, react):
    check_frames(b"".join(frames), cuts, client=client, react=react)


@SETTINGS
@given(st.binary(max_size=1000))
def test_flat_input_as_the_coverage_guided_fuzzer_feeds_it(data):
    frames_from_bytes(data)
