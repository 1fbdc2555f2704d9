# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""The test suite of trio-bridge: a package, so helpers are imported relatively."""
