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
  measured utilisation per call over the same window (utilisation / the time-averaged number
  of admitted calls, both exponential averages over the engine's ``load_window_s``, so the work
  of calls that just ended is not charged to the calls admitted after them), but never less
  than the configured prior (calls that were just admitted have not spoken yet). Request-level
  refusal is the schedulers' bounded queues (:class:`~.request.SchedulerFullError`).

LLM work units are tokens, and the scheduler counts a prompt's tokens like generated ones. They
are not alike: a prompt runs through llama.cpp in one batched pass, a generated token costs a
whole decode step, so a burst of new prompts would read as several times the engine's capacity
and refuse calls on an engine that is only briefly busy. The controller therefore reweights the
LLM's work: from consecutive snapshots it recovers the units of each step (the work rate is an
exponential average, so the difference of two snapshots is exact), counts one unit per batch
item as the decode token and the rest as prompt tokens at ``llm_prefill_token_weight`` decode
tokens each, and scales the engine's measured utilisation by weighted / raw work over the same
window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .base import EngineStats
from .rates import DecayingRate
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
    # Prompt tokens run through llama.cpp in one batched pass. The default is an estimate for
    # a GPU, where prompt processing is many times faster per token than a decode step (not
    # measured here); on the shared 2-core CPU box with the bundled model a prompt token cost
    # 0.57 of a single-sequence decode token (8.4 vs 14.6 ms), so config/inference.yaml sets 0.6.
    llm_prefill_token_weight: float = Field(
        0.2,
        ge=0,
        le=1,
        description="cost of one prompt (prefill) token in generated tokens",
    )

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
        # Time-averaged number of admitted calls per engine, over that engine's load window:
        # (average, as of time). The controller reads no clock: times come with the calls.
        self._calls_avg: dict[Engine, tuple[float, float]] = {}
        self._t = -math.inf  # the latest time any call told us
        # LLM work over the engine's load window: as counted, and with prompt tokens weighted.
        self._llm_raw: DecayingRate | None = None
        self._llm_weighted: DecayingRate | None = None

    @property
    def active_calls(self) -> int:
        """Number of admitted calls not yet released."""
        return len(self._calls)

    def update(self, stats: EngineStats) -> None:
        """Take an engine's newest snapshot (older snapshots of that engine are replaced)."""
        current = self._stats.get(stats.engine)
        self._advance(stats.at)
        if stats.engine not in self._calls_avg:
            self._calls_avg[stats.engine] = (float(self.active_calls), stats.at)
        if current is None or stats.at >= current.at:
            if stats.engine is Engine.LLM:
                self._weigh_llm_steps(current, stats)
            self._stats[stats.engine] = stats

    def _weigh_llm_steps(self, prev: EngineStats | None, st: EngineStats) -> None:
        steps = st.steps - (prev.steps if prev is not None else 0)
        if steps <= 0:
            return
        tau = st.load_window_s
        if self._llm_raw is None or self._llm_raw.tau_s != tau:
            self._llm_raw, self._llm_weighted = DecayingRate(tau), DecayingRate(tau)
        assert self._llm_weighted is not None
        before = 0.0
        if prev is not None:
            before = prev.work_units_per_s * math.exp(-max(0.0, st.at - prev.at) / tau)
        units = max(0.0, (st.work_units_per_s - before) * tau)
        # One unit per item is its decode token (a prefill item's last chunk emits one too);
        # with several steps between snapshots their batch sizes are assumed alike.
        decode = min(units, float(st.last_batch_size * steps))
        prompt = units - decode
        self._llm_raw.add(st.at, units)
        self._llm_weighted.add(st.at, decode + self.config.llm_prefill_token_weight * prompt)

    def _advance(self, now: float) -> None:
        """Bring the call averages to ``now`` with the call count that held until now."""
        if now <= self._t:
            return
        n = float(self.active_calls)
        for engine, (avg, at) in self._calls_avg.items():
            if now > at:
                decay = math.exp(-(now - at) / self._stats[engine].load_window_s)
                self._calls_avg[engine] = (n + (avg - n) * decay, now)
        self._t = now

    def calls_average(self, engine: Engine, now: float) -> float:
        """Admitted calls averaged over ``engine``'s load window (the window of its work rate)."""
        entry = self._calls_avg.get(engine)
        if entry is None:
            return float(self.active_calls)
        avg, at = entry
        n = float(self.active_calls)
        if now <= at:
            return avg
        return n + (avg - n) * math.exp(-(now - at) / self._stats[engine].load_window_s)

    def _llm_cost_factor(self, now: float) -> float:
        """Weighted / counted LLM work over the window (1 while nothing was reconstructed)."""
        if self._llm_raw is None or self._llm_weighted is None:
            return 1.0
        raw = self._llm_raw.per_second(now)
        if raw <= 0:
            return 1.0
        return self._llm_weighted.per_second(now) / raw

    def utilization(self, engine: Engine, now: float) -> float:
        """Offered work / capacity of ``engine`` (0 for an engine without stats)."""
        st = self._stats.get(engine)
        if st is None:
            return 0.0
        work = st.work_units_per_s * math.exp(-max(0.0, now - st.at) / st.load_window_s)
        if engine is Engine.LLM:
            work *= self._llm_cost_factor(now)
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
            # Measured demand: the window's work over the calls of the same window.
            calls = self.calls_average(engine, now)
            measured = util / max(calls, 1.0) if n and calls > 0 else 0.0
            per_call = max(measured, prior)
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
        self._advance(now)
        self._calls.add(call_id)
        return Decision(True, "admitted", load, projected)

    def release_call(self, call_id: str, now: float | None = None) -> bool:
        """The call ended (at ``now``; default: the latest time the controller was told of);
        returns False if it was not admitted."""
        if call_id in self._calls:
            self._advance(self._t if now is None else now)
            self._calls.remove(call_id)
            return True
        return False
