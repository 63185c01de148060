"""Percentiles as the benchmarks quote them."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method: p50 of two values is their mean; one value is itself)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def against_floor(floor: list[float], l3lb: list[float]) -> dict[str, float]:
    """p50 and p99 of FRR's floor and of l3lb measured in the same run, and what l3lb adds at p50 (ms)."""
    row = {
        "floor_p50": pct(floor, 50),
        "floor_p99": pct(floor, 99),
        "l3lb_p50": pct(l3lb, 50),
        "l3lb_p99": pct(l3lb, 99),
    }
    row["added_p50"] = row["l3lb_p50"] - row["floor_p50"]
    return row
