"""Discrete-event simulation of N calls through the three engines on virtual time.

The skeleton of the benchmark: the real schedulers (deadline or serial) drive synthetic engines
whose step time is ``fixed + per_item * batch + per_unit * units``. Each call repeats turns: the
caller speaks 2-4 s (interim transcriptions every ``interim_every_s``), the end of turn starts
the final transcription, its text the LLM (prefill, then one token per step), every complete
clause a TTS request; the agent's audio plays out, the caller pauses, and speaks again.
Latencies are measured from the end of turn: ``stt_final``, ``llm_first_clause``, ``tts_first``
(the compute latency of a turn). Pure and deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import BaseScheduler
from .config import SchedulingConfig
from .deadlines import CallClock
from .request import Batch, Engine, Request, SchedulerFullError, Stage, StepOutput
from .serial import Mode, make_scheduler

__all__ = [
    "CPU_PROFILES",
    "GPU_PROFILES",
    "EngineProfile",
    "SimResult",
    "Workload",
    "compare",
    "simulate",
]


@dataclass(frozen=True)
class EngineProfile:
    """Synthetic step time of an engine: ``fixed_s + per_item_s * b + per_unit_s * units``."""

    fixed_s: float
    per_item_s: float
    per_unit_s: float

    def step_s(self, batch_size: int, units: float) -> float:
        """Seconds one step of ``batch_size`` items totalling ``units`` takes."""
        return self.fixed_s + self.per_item_s * batch_size + self.per_unit_s * units


# Loosely shaped after the measurements in DESIGN.md (tiny models, 2 CPU threads): batching
# pays a little for STT and the LLM, not for Piper on CPU. Units: audio s, tokens, characters.
CPU_PROFILES = {
    Engine.STT: EngineProfile(0.004, 0.002, 0.010),
    Engine.LLM: EngineProfile(0.012, 0.012, 0.0004),
    Engine.TTS: EngineProfile(0.002, 0.0, 0.0015),
}
# A GPU: steps cost about the same whatever the batch.
GPU_PROFILES = {
    Engine.STT: EngineProfile(0.010, 0.0005, 0.0005),
    Engine.LLM: EngineProfile(0.012, 0.0002, 0.00002),
    Engine.TTS: EngineProfile(0.008, 0.0005, 0.00005),
}


@dataclass(frozen=True)
class Workload:
    """The synthetic calls."""

    calls: int = 10
    turns_per_call: int = 3
    speech_s: tuple[float, float] = (2.0, 4.0)
    pause_s: tuple[float, float] = (0.3, 1.0)
    stagger_s: float = 0.5  # calls start uniformly within calls * stagger_s
    interim_every_s: float | None = 0.5  # None: no interim transcriptions
    prompt_tokens: int = 200
    answer_tokens: int = 32
    clause_tokens: int = 8  # the answer is cut into clauses of this many tokens
    chars_per_token: float = 4.0
    seed: int = 0


@dataclass
class SimResult:
    """Per-stage latencies (seconds after end of turn) and engine counters of one run."""

    mode: str
    latencies: dict[str, list[float]] = field(default_factory=dict)
    turns_completed: int = 0
    failed_turns: int = 0
    refused: int = 0
    deadline_misses: dict[str, int] = field(default_factory=dict)
    mean_batch: dict[str, float] = field(default_factory=dict)
    end_time: float = 0.0

    def percentile(self, stage: str, q: float) -> float:
        """Nearest-rank percentile ``q`` (0..100) of a stage's latencies."""
        values = sorted(self.latencies.get(stage, []))
        if not values:
            raise ValueError(f"no latencies recorded for {stage!r}")
        rank = max(1, math.ceil(q / 100.0 * len(values)))
        return values[rank - 1]

    def summary(self) -> dict[str, dict[str, float]]:
        """p50 / p95 / max in milliseconds per stage."""
        return {
            stage: {
                "p50_ms": 1000 * self.percentile(stage, 50),
                "p95_ms": 1000 * self.percentile(stage, 95),
                "max_ms": 1000 * max(values),
            }
            for stage, values in self.latencies.items()
            if values
        }


@dataclass
class _Call:
    call_id: str
    turn: int = 0
    speech_s: float = 0.0
    turn_end: float = 0.0
    tokens: int = 0
    clauses_sent: int = 0
    clauses_done: int = 0
    llm_done: bool = False
    failed: bool = False


@dataclass(frozen=True)
class _Work:
    call: _Call
    turn: int
    clause: int = 0


class _Simulation:
    def __init__(
        self,
        workload: Workload,
        mode: Mode,
        profiles: dict[Engine, EngineProfile],
        config: SchedulingConfig,
    ) -> None:
        self.w = workload
        self.profiles = profiles
        self.deadlines = config.deadlines
        self.clock = CallClock(config.deadlines, max_calls=max(1, workload.calls))
        self.scheds: dict[Engine, BaseScheduler] = {
            e: make_scheduler(e, config.for_engine(e), mode) for e in Engine
        }
        self.busy = dict.fromkeys(Engine, False)
        self.rng = random.Random(workload.seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self.work: dict[str, _Work] = {}
        self.result = SimResult(mode=mode)
        self._batches: dict[Engine, list[int]] = {e: [] for e in Engine}

    # -- event plumbing ----------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def run(self) -> SimResult:
        for i in range(self.w.calls):
            call = _Call(f"call{i}")
            self.at(self.rng.uniform(0, self.w.calls * self.w.stagger_s), self._turn_fn(call))
        while self._events:
            t, _, fn = heapq.heappop(self._events)
            self.now = t
            fn()
        r = self.result
        r.end_time = self.now
        for e, s in self.scheds.items():
            r.deadline_misses[str(e)] = s.deadline_misses
            sizes = self._batches[e]
            r.mean_batch[str(e)] = sum(sizes) / len(sizes) if sizes else 0.0
        return r

    def record(self, stage: str, latency: float) -> None:
        self.result.latencies.setdefault(stage, []).append(latency)

    def submit(
        self, call: _Call, stage: Stage, units: float, deadline: float, clause: int = 0
    ) -> None:
        rid = f"r{next(self._ids)}"
        key = call.call_id if stage in (Stage.STT_INTERIM, Stage.STT_FINAL) else None
        req = Request(rid, call.call_id, stage, self.now, deadline, units, key)
        try:
            replaced = self.scheds[stage.engine].add_request(req, self.now)
        except SchedulerFullError:
            self.result.refused += 1
            if stage is not Stage.STT_INTERIM:  # the stream got `overloaded`: the turn is lost
                self._fail_turn(call)
            return
        if replaced is not None:
            del self.work[replaced]
        self.work[rid] = _Work(call, call.turn, clause)
        self._kick(stage.engine)

    # -- the call script ---------------------------------------------------------------------
    def _turn_fn(self, call: _Call) -> Callable[[], None]:
        return lambda: self._start_turn(call)

    def _start_turn(self, call: _Call) -> None:
        call.speech_s = self.rng.uniform(*self.w.speech_s)
        call.tokens = call.clauses_sent = call.clauses_done = 0
        call.llm_done = call.failed = False
        start, every = self.now, self.w.interim_every_s
        if every:
            for k in range(1, math.ceil(call.speech_s / every)):
                self.at(start + k * every, self._interim_fn(call, k * every))
        self.at(start + call.speech_s, lambda: self._end_of_turn(call))

    def _interim_fn(self, call: _Call, audio_s: float) -> Callable[[], None]:
        def fire() -> None:
            deadline = self.clock.deadline(call.call_id, Stage.STT_INTERIM, self.now)
            self.submit(call, Stage.STT_INTERIM, audio_s, deadline)

        return fire

    def _end_of_turn(self, call: _Call) -> None:
        call.turn_end = self.now
        self.clock.end_of_turn(call.call_id, self.now)
        deadline = self.clock.deadline(call.call_id, Stage.STT_FINAL, self.now)
        self.submit(call, Stage.STT_FINAL, call.speech_s, deadline)

    def _fail_turn(self, call: _Call) -> None:
        if call.failed:
            return
        call.failed = True
        self.result.failed_turns += 1
        for s in self.scheds.values():
            for rid in s.abort_call(call.call_id):
                self.work.pop(rid, None)  # in-step ones stay until their step is reported
        self._next_turn(call, self.now)

    def _next_turn(self, call: _Call, agent_done: float) -> None:
        call.turn += 1
        if call.turn < self.w.turns_per_call:
            self.at(agent_done + self.rng.uniform(*self.w.pause_s), self._turn_fn(call))
        else:
            self.clock.forget(call.call_id)

    # -- engines -----------------------------------------------------------------------------
    def _kick(self, engine: Engine) -> None:
        if self.busy[engine]:
            return
        batch = self.scheds[engine].schedule(self.now)
        for rid in batch.release_ids:
            self.work.pop(rid, None)
        if not batch:
            return
        self.busy[engine] = True
        self._batches[engine].append(batch.size)
        step_s = self.profiles[engine].step_s(batch.size, batch.units)
        self.at(self.now + step_s, lambda: self._step_done(engine, batch, step_s))

    def _step_done(self, engine: Engine, batch: Batch, step_s: float) -> None:
        self.busy[engine] = False
        outputs: list[StepOutput] = []
        then: list[Callable[[], None]] = []
        for req in batch.requests:
            work = self.work[req.request_id]
            outputs.append(self._output(req, work, then))
        result = self.scheds[engine].update_from_output(batch, outputs, step_s, self.now)
        for rid in (*result.finished, *result.failed, *result.cancelled):
            self.work.pop(rid, None)
        for fn in then:
            fn()
        self._kick(engine)

    def _output(self, req: Request, work: _Work, then: list[Callable[[], None]]) -> StepOutput:
        call, rid = work.call, req.request_id
        if work.turn != call.turn or call.failed:
            return StepOutput(rid, done=True)  # a stale turn's leftovers: nothing to do
        since_turn = self.now - call.turn_end
        if req.stage is Stage.STT_INTERIM:
            self.record("stt_interim", self.now - req.arrival)
            return StepOutput(rid, done=True)
        if req.stage is Stage.STT_FINAL:
            self.record("stt_final", since_turn)
            then.append(lambda: self._start_llm(call))
            return StepOutput(rid, done=True)
        if req.engine is Engine.LLM:
            return self._llm_output(req, call, then)
        # TTS: the clause's audio goes out now and plays for its length.
        chars = self.w.clause_tokens * self.w.chars_per_token
        self.clock.audio_sent(call.call_id, self.now, self.deadlines.playout_of_text_s(int(chars)))
        if work.clause == 0:
            self.record("tts_first", since_turn)
        call.clauses_done += 1
        if call.llm_done and call.clauses_done == call.clauses_sent:
            self.result.turns_completed += 1
            agent_done = self.now + self.clock.playout_left_s(call.call_id, self.now)
            then.append(lambda: self._next_turn(call, agent_done))
        return StepOutput(rid, done=True)

    def _start_llm(self, call: _Call) -> None:
        deadline = self.clock.deadline(call.call_id, Stage.LLM_FIRST_CLAUSE, self.now)
        self.submit(call, Stage.LLM_FIRST_CLAUSE, self.w.prompt_tokens, deadline)

    def _llm_output(self, req: Request, call: _Call, then: list[Callable[[], None]]) -> StepOutput:
        call.tokens += 1  # prefill emits the first token, every later step one more
        rid, w = req.request_id, self.w
        clause_end = call.tokens % w.clause_tokens == 0 or call.tokens == w.answer_tokens
        done = call.tokens >= w.answer_tokens
        if clause_end:
            clause = call.clauses_sent
            call.clauses_sent += 1
            then.append(lambda: self._start_tts(call, clause))
            if req.stage is Stage.LLM_FIRST_CLAUSE:
                self.record("llm_first_clause", self.now - call.turn_end)
        if done:
            call.llm_done = True
            return StepOutput(rid, done=True)
        if clause_end and req.stage is Stage.LLM_FIRST_CLAUSE:
            chars = int(call.tokens * w.chars_per_token)
            slack = self.clock.clause_deadline(call.call_id, self.now, chars) - self.now
            return StepOutput(rid, units=1.0, next_stage=Stage.LLM_REST, slack_s=max(0.0, slack))
        return StepOutput(rid, units=1.0)

    def _start_tts(self, call: _Call, clause: int) -> None:
        chars = self.w.clause_tokens * self.w.chars_per_token
        if clause == 0:
            stage = Stage.TTS_FIRST
            deadline = self.clock.deadline(call.call_id, stage, self.now)
        else:
            stage = Stage.TTS_REST
            before = int(clause * chars)
            deadline = self.clock.clause_deadline(call.call_id, self.now, before)
        self.submit(call, stage, chars, deadline, clause)


def simulate(
    workload: Workload,
    mode: Mode = "deadline",
    profiles: dict[Engine, EngineProfile] | None = None,
    config: SchedulingConfig | None = None,
) -> SimResult:
    """Run ``workload`` through the ``mode`` schedulers on synthetic engines (CPU-like default)."""
    cfg = (config or SchedulingConfig()).model_copy(update={"mode": mode})
    return _Simulation(workload, mode, profiles or CPU_PROFILES, cfg).run()


def compare(
    workload: Workload,
    profiles: dict[Engine, EngineProfile] | None = None,
    config: SchedulingConfig | None = None,
) -> dict[str, SimResult]:
    """The same workload under the deadline scheduler and the serial baseline."""
    modes: tuple[Mode, ...] = ("deadline", "serial")
    return {mode: simulate(workload, mode, profiles, config) for mode in modes}
