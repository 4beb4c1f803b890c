"""The capacity search as a step function over verdicts, driven by scripted outcomes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.bench.capacity import SweepPlan, capacity, meets_target, next_point


def drive(plan: SweepPlan, passes: Callable[[int], bool], limit: int = 50) -> list[int]:
    """Run the sweep loop the way the runner does; returns the N values in measured order."""
    verdicts: dict[int, bool] = {}
    order: list[int] = []
    while (n := next_point(plan, verdicts)) is not None:
        assert n not in verdicts, f"N={n} measured twice"
        verdicts[n] = passes(n)
        order.append(n)
        assert len(order) < limit
    return order


def test_climbs_until_break_then_required_then_bisects() -> None:
    plan = SweepPlan.build([1, 2, 4, 8, 16, 32], required=[1, 4, 8], refine=True)
    order = drive(plan, lambda n: n <= 5)
    # 1,2,4 pass; 8 fails -> 16, 32 skipped; bisect 4..8: 6 fails, 5 passes.
    assert order == [1, 2, 4, 8, 6, 5]
    verdicts = {n: n <= 5 for n in order}
    assert capacity(verdicts) == 5


def test_required_points_are_measured_after_an_early_break() -> None:
    plan = SweepPlan.build([1, 2, 4, 8, 16], required=[1, 4, 8], refine=True)
    order = drive(plan, lambda n: n == 1)
    assert order == [1, 2, 4, 8]  # 16 is not required and above the break
    assert capacity({n: n == 1 for n in order}) == 1


def test_no_refine_stops_at_break() -> None:
    plan = SweepPlan.build([1, 2, 4, 8], required=[1], refine=False)
    assert drive(plan, lambda n: n < 4) == [1, 2, 4]


def test_everything_passes_gives_top_of_ladder() -> None:
    plan = SweepPlan.build([1, 2, 4, 8], required=[1, 4, 8], refine=True)
    order = drive(plan, lambda n: True)
    assert order == [1, 2, 4, 8]
    assert capacity(dict.fromkeys(order, True)) == 8


def test_nothing_passes_gives_zero() -> None:
    plan = SweepPlan.build([2, 4], required=[4], refine=True)
    order = drive(plan, lambda n: False)
    assert order == [2, 4, 1]  # bisection between 0 and the first failure (2) tries 1
    assert capacity(dict.fromkeys(order, False)) == 0


def test_capacity_ignores_passes_above_a_failure() -> None:
    assert capacity({1: True, 2: False, 4: True, 8: True}) == 1
    assert capacity({}) == 0


def test_required_values_join_the_ladder() -> None:
    plan = SweepPlan.build([1, 2, 16], required=[4, 8], refine=False)
    assert plan.ladder == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("ladder", [(), (0, 1), (2, 1), (1, 1)])
def test_bad_ladders_are_rejected(ladder: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        SweepPlan(ladder=ladder)


def test_required_must_be_on_ladder() -> None:
    with pytest.raises(ValueError, match="not on the ladder"):
        SweepPlan(ladder=(1, 2), required=frozenset({3}))


def test_meets_target() -> None:
    def m(p95: float | None, completed: int = 10, refused: int = 0, errors: int = 0) -> bool:
        return meets_target(
            p95_compute_ms=p95, completed=completed, refused=refused, errors=errors, limit_ms=600.0
        )

    assert m(600.0)
    assert not m(600.1)
    assert not m(None)
    assert not m(100.0, refused=1)
    assert not m(100.0, errors=1)
    assert not m(100.0, completed=0)
