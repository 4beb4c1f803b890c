"""Capacity search: which N to measure next, and the capacity the measurements imply.

The search is a pure step function over the verdicts measured so far (N -> passed?), so the
runner stays a plain loop (``while (n := next_point(plan, verdicts)) is not None``) and the
logic is unit-tested without a server.

Capacity is the largest N that met the target while every smaller measured N met it too: a
point that passes above a failing one (noise on a shared machine) does not raise the capacity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SweepPlan", "capacity", "meets_target", "next_point"]


def meets_target(
    *, p95_compute_ms: float | None, completed: int, refused: int, errors: int, limit_ms: float
) -> bool:
    """The capacity criterion for one point: p95 compute latency within ``limit_ms``, at least
    one completed turn, no refusals and no errors (a server that fails turns has no capacity
    to claim, however fast the turns that did complete were)."""
    if completed < 1 or p95_compute_ms is None:
        return False
    return refused == 0 and errors == 0 and p95_compute_ms <= limit_ms


@dataclass(frozen=True)
class SweepPlan:
    """Which N values a sweep may measure."""

    ladder: tuple[int, ...]
    """Ascending N values to try; the sweep stops climbing at the first one that fails."""
    required: frozenset[int] = frozenset()
    """N values measured even after the sweep broke (the points every report quotes)."""
    refine: bool = True
    """Bisect between the capacity and the first failing N when there is a gap."""

    def __post_init__(self) -> None:
        if not self.ladder:
            raise ValueError("the sweep ladder is empty")
        if any(n < 1 for n in self.ladder) or list(self.ladder) != sorted(set(self.ladder)):
            raise ValueError(f"ladder must be strictly ascending positive N, got {self.ladder}")
        missing = sorted(self.required - set(self.ladder))
        if missing:
            raise ValueError(f"required N {missing} are not on the ladder {self.ladder}")

    @classmethod
    def build(cls, ladder: Sequence[int], required: Sequence[int], refine: bool) -> SweepPlan:
        """A plan whose ladder also contains every required N (sorted, deduplicated)."""
        return cls(
            ladder=tuple(sorted(set(ladder) | set(required))),
            required=frozenset(required),
            refine=refine,
        )


def capacity(verdicts: Mapping[int, bool]) -> int:
    """Largest measured N that passed with every smaller measured N passing; 0 if none."""
    best = 0
    for n in sorted(verdicts):
        if not verdicts[n]:
            break
        best = n
    return best


def _first_failure_above(verdicts: Mapping[int, bool], floor: int) -> int | None:
    failing = [n for n, ok in verdicts.items() if not ok and n > floor]
    return min(failing) if failing else None


def next_point(plan: SweepPlan, verdicts: Mapping[int, bool]) -> int | None:
    """The next N to measure, or ``None`` when the sweep is complete.

    Order: ladder values from the bottom up until one fails; after that only the required
    values still missing; then, with ``refine``, bisection between the capacity and the first
    failing N above it until they are adjacent.
    """
    failures = [n for n, ok in verdicts.items() if not ok]
    first_fail = min(failures) if failures else None
    for n in plan.ladder:
        if n in verdicts:
            continue
        if first_fail is None or n < first_fail or n in plan.required:
            return n
    if plan.refine:
        cap = capacity(verdicts)
        hi = _first_failure_above(verdicts, cap)
        if hi is not None and hi - cap > 1:
            mid = (cap + hi) // 2
            if mid >= 1 and mid not in verdicts:
                return mid
    return None
