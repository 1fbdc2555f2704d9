# SPDX-FileCopyrightText: 2026 trio-bridge contributors
# SPDX-License-Identifier: MPL-2.0
"""Benchmarks: ``python -m bench mux`` and ``python -m bench tunnel``."""
