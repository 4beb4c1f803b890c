"""Per-stage latency at a glance: p50/p95 over the last agent replies the console has seen."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

from worker.agent.turn_metrics import STAGES as AGENT_STAGES
from worker.bench.stats import nearest_rank

__all__ = ["STAGES", "LatencyStats"]

STAGES: tuple[str, ...] = (*AGENT_STAGES, "e2e")
"""The stages of an agent reply, as ``agent_turn`` events and records name them."""


class LatencyStats:
    """The latency of the last ``window`` agent replies."""

    def __init__(self, window: int = 200) -> None:
        self._turns: deque[dict[str, float]] = deque(maxlen=window)

    def add(self, latency: Mapping[str, object] | None) -> None:
        """Count one reply's per-stage seconds (unknown stages and bad values are ignored)."""
        if not isinstance(latency, Mapping):
            return
        clean = {}
        for stage in STAGES:
            value = latency.get(stage)
            if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
                clean[stage] = float(value)
        if clean:
            self._turns.append(clean)

    def summary(self) -> dict[str, object]:
        """``{"turns": n, "stages": {stage: {"p50": s, "p95": s}}}`` (None where unknown)."""
        stages: dict[str, dict[str, float | None]] = {}
        for stage in STAGES:
            values = [t[stage] for t in self._turns if stage in t]
            stages[stage] = {"p50": nearest_rank(values, 50), "p95": nearest_rank(values, 95)}
        return {"turns": len(self._turns), "stages": stages}
