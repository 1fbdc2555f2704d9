# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""HTTP status codes in words, for answers and error messages."""

from __future__ import annotations

from http import HTTPStatus


def status_phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status code (``404`` -> ``"Not Found"``), or
    ``""`` for a code HTTP does not define. Never raises."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
