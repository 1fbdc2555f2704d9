# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The bridge protocol both ends speak: the login handshake, the connect request and addresses."""
