# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Byte streams both ends use.

TLS, WebSocket client and server, HTTP CONNECT proxies, prefixed streams.
"""
