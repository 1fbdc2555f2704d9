# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The agent: dials out to a relay, serves the targets on its allow-list (``bridge-agent``)."""
