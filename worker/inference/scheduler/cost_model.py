"""Online model of an engine's step time as a function of batch size and work units.

Two layers, both learned from measured steps only:

* a linear model ``t = a + c*batch + d*units`` fitted by exponentially weighted ridge regression
  (old steps fade with ``forgetting``; a weak prior keeps directions the data does not excite,
  e.g. batch sizes never tried, near the configured guess); it predicts unseen batch sizes and
  the per-unit slope;
* per batch size an anchor: an EWMA of measured step time and units at exactly that size. Once a
  size has ``anchor_min_samples`` measurements its prediction is the anchor, corrected for units
  by the linear slope. Anchors capture what a line cannot (a GPU that is flat up to a knee).

:meth:`CostModel.batching_pays` answers the scheduler's question: does one more item per batch
lower the per-item cost? On a CPU where step time grows linearly with batch size it learns "no"
(the scheduler then runs batches of one); on a GPU where a step costs about the same for 1 or 32
sequences it learns "yes". Pure arithmetic, deterministic, no clock, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CostModel", "CostModelConfig"]

_MIN_STEP_S = 1e-6


class CostModelConfig(BaseModel):
    """Prior guess and learning rates of one engine's cost model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prior_fixed_s: float = Field(0.010, ge=0, description="guessed per-step overhead")
    prior_per_item_s: float = Field(0.005, ge=0, description="guessed cost of one more item")
    prior_per_unit_s: float = Field(0.0, ge=0, description="guessed cost of one work unit")
    prior_weight: float = Field(1.0, gt=0, description="prior strength, in observations")
    forgetting: float = Field(0.97, gt=0, le=1, description="weight kept by old steps per step")
    anchor_alpha: float = Field(0.2, gt=0, le=1, description="EWMA rate of per-size anchors")
    anchor_min_samples: int = Field(3, ge=1, description="steps at a size before it is trusted")
    min_gain: float = Field(
        0.1, ge=0, lt=1, description="batching pays when per-item cost falls by this fraction"
    )
    knee_tolerance: float = Field(
        0.05, ge=0, description="noise allowed before a rising per-item cost counts as a knee"
    )


@dataclass
class _Anchor:
    step_s: float
    units: float
    count: int
    last: int  # index of the observation that last updated it


def _solve3(m: list[list[float]], v: list[float]) -> list[float]:
    """Solve the 3x3 system ``m x = v`` by Gaussian elimination with partial pivoting."""
    a = [[*row, v[i]] for i, row in enumerate(m)]
    n = 3
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-18:
            raise ZeroDivisionError("singular system")
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for k in range(col, n + 1):
                a[r][k] -= f * a[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        s = a[r][n] - sum(a[r][k] * x[k] for k in range(r + 1, n))
        x[r] = s / a[r][r]
    return x


class CostModel:
    """Predicts step time of one engine; fed with every measured step by its scheduler."""

    def __init__(self, config: CostModelConfig | None = None, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.config = config or CostModelConfig()
        self.max_batch = max_batch
        c = self.config
        self._prior = [c.prior_fixed_s, c.prior_per_item_s, c.prior_per_unit_s]
        self._s = [[0.0] * 3 for _ in range(3)]  # decayed sum of x x^T
        self._r = [0.0] * 3  # decayed sum of x t
        self._theta = self._prior[:]
        self._anchors: dict[int, _Anchor] = {}
        self._units_per_item = 1.0
        self.observations = 0

    @property
    def coefficients(self) -> tuple[float, float, float]:
        """Current linear fit ``(fixed_s, per_item_s, per_unit_s)``."""
        return (self._theta[0], self._theta[1], self._theta[2])

    @property
    def units_per_item(self) -> float:
        """Running mean of work units per batch item (for capacity estimates)."""
        return self._units_per_item

    def observe(self, batch_size: int, units: float, step_s: float) -> None:
        """Learn from one measured step of ``batch_size`` items totalling ``units``."""
        if not 1 <= batch_size <= self.max_batch:
            raise ValueError(f"batch_size must be in 1..{self.max_batch}, got {batch_size}")
        if not (math.isfinite(units) and units >= 0):
            raise ValueError(f"units must be finite and >= 0, got {units}")
        if not (math.isfinite(step_s) and step_s >= 0):
            raise ValueError(f"step time must be finite and >= 0, got {step_s}")
        lam = self.config.forgetting
        x = [1.0, float(batch_size), units]
        for i in range(3):
            self._r[i] = lam * self._r[i] + x[i] * step_s
            for j in range(3):
                self._s[i][j] = lam * self._s[i][j] + x[i] * x[j]
        w = self.config.prior_weight
        m = [[self._s[i][j] + (w if i == j else 0.0) for j in range(3)] for i in range(3)]
        v = [self._r[i] + w * self._prior[i] for i in range(3)]
        try:
            self._theta = _solve3(m, v)
        except ZeroDivisionError:  # cannot happen with a positive ridge; keep the last fit
            pass
        alpha = self.config.anchor_alpha
        anchor = self._anchors.get(batch_size)
        if anchor is None:
            self._anchors[batch_size] = _Anchor(step_s, units, 1, self.observations)
        else:
            anchor.step_s += alpha * (step_s - anchor.step_s)
            anchor.units += alpha * (units - anchor.units)
            anchor.count += 1
            anchor.last = self.observations
        self._units_per_item += alpha * (units / batch_size - self._units_per_item)
        self.observations += 1

    def predict(self, batch_size: int, units: float) -> float:
        """Predicted seconds of one step of ``batch_size`` items totalling ``units``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        a, c, d = self._theta
        anchor = self._anchors.get(batch_size)
        if anchor is not None and anchor.count >= self.config.anchor_min_samples:
            t = anchor.step_s + d * (units - anchor.units)
        else:
            t = a + c * batch_size + d * units
        return max(_MIN_STEP_S, t)

    def _pays(self, b: int, total_units: float, best_per_item: float) -> tuple[bool, float]:
        """Does a batch of ``b`` pay, given the lowest per-item cost of the smaller sizes?
        Returns the verdict and the per-item cost at ``b``."""
        per_item = self.predict(b, total_units) / b
        single = self.predict(1, total_units / b)
        worth_it = per_item <= (1.0 - self.config.min_gain) * single
        # Past a knee the per-item cost rises again: a bigger batch then only adds latency.
        still_falling = per_item <= best_per_item * (1.0 + self.config.knee_tolerance)
        return worth_it and still_falling, per_item

    def batch_size_for(self, prefix_units: Sequence[float]) -> int:
        """Largest paying batch for candidates whose cumulative units are ``prefix_units``
        (``prefix_units[b-1]`` = units of the first ``b`` candidates); 1 if none pays."""
        if not prefix_units:
            return 0
        best, best_per_item = 1, self.predict(1, prefix_units[0])
        for b in range(2, min(len(prefix_units), self.max_batch) + 1):
            pays, per_item = self._pays(b, prefix_units[b - 1], best_per_item)
            if pays:
                best = b
            best_per_item = min(best_per_item, per_item)
        return best

    def best_batch(self, limit: int, units_per_item: float | None = None) -> int:
        """The largest batch size up to ``limit`` for which batching pays (1 if none does)."""
        u = self._units_per_item if units_per_item is None else units_per_item
        return self.batch_size_for([u * b for b in range(1, max(1, limit) + 1)])

    def batching_pays(self, batch_size: int, units_per_item: float | None = None) -> bool:
        """True when ``batch_size`` items per step cost at least ``min_gain`` less per item than
        one alone, and the per-item cost is still falling at that size (not past a knee)."""
        if batch_size <= 1:
            return True
        u = self._units_per_item if units_per_item is None else units_per_item
        best_per_item = self.predict(1, u)
        pays = False
        for b in range(2, batch_size + 1):
            pays, per_item = self._pays(b, u * b, best_per_item)
            best_per_item = min(best_per_item, per_item)
        return pays

    def capacity_units_per_s(self, limit: int) -> float:
        """Work units per second the engine can do at its most efficient batch size <= limit."""
        u = max(self._units_per_item, 1e-9)
        return max(b * u / self.predict(b, b * u) for b in range(1, min(limit, self.max_batch) + 1))

    def stalest_size(self, sizes: Iterable[int]) -> int:
        """Of ``sizes``, the one measured longest ago (never measured first; smallest on ties):
        the scheduler explores it now and then so no prior or old knowledge locks the model in."""

        def last_seen(b: int) -> tuple[int, int]:
            anchor = self._anchors.get(b)
            return (anchor.last if anchor is not None else -1, b)

        return min(sizes, key=last_seen)
