"""Admission control: how loaded the server is, and whether it may take one more call.

Inputs are the :class:`~.base.EngineStats` snapshots the engine threads post after their steps
(capacity from each engine's learned cost model, work done per second, queue depth). The
controller lives on the server's event loop, which alone mutates it; it reads no clock.

* ``load(now)`` in 0..1 is what ``GET /v1/capacity`` returns and workers report to LiveKit as
  their load, so that dispatch stops before latency breaks: the highest of, over engines,
  work rate / capacity and queue fill, and of active calls / ``max_calls``. The work rate of an
  engine that posts nothing (idle) decays with its window, so the load recovers by itself.
* ``admit_call`` refuses at once, with a reason, a call that would push the projected load over
  ``max_load``: the projection is (calls + 1) x per-call demand, where the per-call demand is the
  measured utilisation per active call, but never less than the configured prior (calls that
  were just admitted have not spoken yet). Request-level refusal is the schedulers' bounded
  queues (:class:`~.request.SchedulerFullError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .base import EngineStats
from .request import Engine

__all__ = ["AdmissionConfig", "AdmissionController", "Decision"]


class AdmissionConfig(BaseModel):
    """Limits of one inference server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int = Field(100, ge=1, description="hard cap of concurrent calls")
    max_load: float = Field(0.85, gt=0, le=1, description="refuse calls projected above this")
    stt_units_per_call_s: float = Field(
        0.6, ge=0, description="prior: audio seconds one call sends per second"
    )
    llm_units_per_call_s: float = Field(6.0, ge=0, description="prior: tokens per call-second")
    tts_units_per_call_s: float = Field(8.0, ge=0, description="prior: characters per call-second")

    def prior_units_per_call_s(self, engine: Engine) -> float:
        """The configured per-call demand on ``engine`` in its work units per second."""
        return {
            Engine.STT: self.stt_units_per_call_s,
            Engine.LLM: self.llm_units_per_call_s,
            Engine.TTS: self.tts_units_per_call_s,
        }[engine]


@dataclass(frozen=True)
class Decision:
    """Outcome of :meth:`AdmissionController.admit_call`; ``reason`` explains a refusal."""

    accepted: bool
    reason: str
    load: float
    projected_load: float


class AdmissionController:
    """Tracks admitted calls and the engines' latest stats; decides on new calls."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self._calls: set[str] = set()
        self._stats: dict[Engine, EngineStats] = {}

    @property
    def active_calls(self) -> int:
        """Number of admitted calls not yet released."""
        return len(self._calls)

    def update(self, stats: EngineStats) -> None:
        """Take an engine's newest snapshot (older snapshots of that engine are replaced)."""
        current = self._stats.get(stats.engine)
        if current is None or stats.at >= current.at:
            self._stats[stats.engine] = stats

    def utilization(self, engine: Engine, now: float) -> float:
        """Offered work / capacity of ``engine`` (0 for an engine without stats)."""
        st = self._stats.get(engine)
        if st is None:
            return 0.0
        work = st.work_units_per_s * math.exp(-max(0.0, now - st.at) / st.load_window_s)
        if st.capacity_units_per_s <= 0:
            return 1.0 if work > 0 else 0.0
        return work / st.capacity_units_per_s

    def _queue_fill(self, st: EngineStats) -> float:
        return st.waiting / st.max_waiting

    def load(self, now: float) -> float:
        """Current load in 0..1 (see module docstring)."""
        parts = [self.active_calls / self.config.max_calls]
        for engine, st in self._stats.items():
            parts.append(self.utilization(engine, now))
            parts.append(self._queue_fill(st))
        return min(1.0, max(parts))

    def accepting(self, now: float) -> bool:
        """Whether a new call would be admitted now (same test as :meth:`admit_call`)."""
        return self._refusal(now)[0] is None

    def _refusal(self, now: float) -> tuple[str | None, float]:
        n = self.active_calls
        projected = (n + 1) / self.config.max_calls
        if n >= self.config.max_calls:
            return (f"at the call limit: {n} calls active (max_calls={self.config.max_calls})", 1.0)
        # The call count has its own hard cap above; max_load applies to the engines.
        worst: tuple[float, str] = (0.0, "")
        for engine, st in self._stats.items():
            if st.waiting >= st.max_waiting:
                return (f"{engine} queue is full ({st.waiting} waiting)", 1.0)
            util = self.utilization(engine, now)
            if st.capacity_units_per_s > 0:
                prior = self.config.prior_units_per_call_s(engine) / st.capacity_units_per_s
            else:
                prior = 1.0
            # The configured demand is a floor: calls admitted a moment ago have not spoken yet,
            # and a burst of new calls must not all be admitted on an idle engine's numbers.
            per_call = max(util / n if n else 0.0, prior)
            proj = max((n + 1) * per_call, self._queue_fill(st))
            worst = max(worst, (proj, str(engine)))
        engine_load, busiest = worst
        if engine_load > self.config.max_load:
            return (
                f"overloaded: one more call would put the {busiest} engine at {engine_load:.0%} "
                f"of capacity (max_load={self.config.max_load:.0%})",
                engine_load,
            )
        return (None, max(projected, engine_load))

    def admit_call(self, call_id: str, now: float) -> Decision:
        """Admit ``call_id`` or refuse it at once. Admitting an admitted call is accepted."""
        load = self.load(now)
        if call_id in self._calls:
            return Decision(True, "already admitted", load, load)
        reason, projected = self._refusal(now)
        if reason is not None:
            return Decision(False, reason, load, projected)
        self._calls.add(call_id)
        return Decision(True, "admitted", load, projected)

    def release_call(self, call_id: str) -> bool:
        """The call ended; returns False if it was not admitted."""
        if call_id in self._calls:
            self._calls.remove(call_id)
            return True
        return False
