"""Percentiles and summaries: checked against hand-computed values (numpy's linear method)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.bench.stats import percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == pytest.approx(25.0)
    # h = 3 * 0.95 = 2.85 -> 30 + 0.85 * 10
    assert percentile(values, 95) == pytest.approx(38.5)


def test_percentile_ignores_input_order_and_does_not_mutate() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert values == [5.0, 1.0, 3.0, 2.0, 4.0]


def test_percentile_of_single_value() -> None:
    assert percentile([7.5], 99) == 7.5


def test_percentile_matches_numpy() -> None:
    values = [3.1, 9.4, 1.0, 250.0, 42.0, 17.5, 8.8, 600.1, 0.3, 55.5, 12.0]
    for q in (1, 25, 50, 90, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan")])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0, 2.0], q)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_summarize_and_json_rounding() -> None:
    s = summarize([100.0, 200.0, 300.04])
    assert s.count == 3
    assert s.p50 == 200.0
    assert s.max == 300.04
    assert s.mean == pytest.approx(200.0133, abs=1e-3)
    j = s.to_json()
    assert j == {"count": 3, "p50": 200.0, "p95": 290.0, "p99": 298.0, "mean": 200.0, "max": 300.0}


def test_summarize_empty_is_explicitly_unknown() -> None:
    s = summarize([])
    assert s.count == 0
    assert s.p95 is None
    assert s.to_json()["p99"] is None
