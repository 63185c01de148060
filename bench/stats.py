"""Percentiles as the benchmarks quote them."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method: p50 of two values is their mean; one value is itself)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
