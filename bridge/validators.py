# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Validators the configuration classes of both ends share (attrs field validators).

``mux.Config`` keeps its own: mux imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

Validator = Callable[[Any, Any, Any], Any]

#: A duration in seconds, or any other quantity that must be a number above zero.
positive_number: list[Validator] = [
    attrs.validators.instance_of((int, float)),
    attrs.validators.gt(0),
]

#: A count or a size: a whole number above zero.
positive_count: list[Validator] = [attrs.validators.instance_of(int), attrs.validators.gt(0)]
