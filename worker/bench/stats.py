"""Latency statistics for the benchmark: percentiles and per-stage summaries.

Pure functions over plain numbers (milliseconds), so they are unit-tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "nearest_rank", "percentile", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    This is the same definition as numpy's default (``method="linear"``): with sorted values
    ``v`` and ``h = (len(v) - 1) * q / 100`` the result is ``v[floor(h)]`` plus the fraction
    of the way to ``v[ceil(h)]``. Raises :class:`ValueError` for an empty sequence or a ``q``
    outside 0..100, because a percentile of nothing is not a number we should report.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100.0
    lo = math.floor(h)
    hi = math.ceil(h)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (h - lo)


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) as one of the values (nearest rank, no interpolation:
    of 20 turns, p95 is the 19th smallest); None for no values. For reports that quote real
    turns (the load test) rather than a distribution's estimate."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@dataclass(frozen=True)
class Summary:
    """Distribution of one latency (milliseconds) over the turns of one benchmark point."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None

    def to_json(self) -> dict[str, float | int | None]:
        """Plain-JSON form, values rounded to 0.1 ms."""

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "count": self.count,
            "p50": r(self.p50),
            "p95": r(self.p95),
            "p99": r(self.p99),
            "mean": r(self.mean),
            "max": r(self.max),
        }


def summarize(values: Sequence[float]) -> Summary:
    """Percentiles, mean and max of ``values``; all ``None`` (count 0) when there are none."""
    if not values:
        return Summary(count=0, p50=None, p95=None, p99=None, mean=None, max=None)
    return Summary(
        count=len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        mean=sum(values) / len(values),
        max=max(values),
    )
