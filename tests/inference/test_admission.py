"""Admission control on virtual time, fed by real schedulers running a synthetic engine."""

from __future__ import annotations

import itertools

import pytest

from worker.inference.scheduler import (
    AdmissionConfig,
    AdmissionController,
    CostModelConfig,
    Engine,
    EngineStats,
    Request,
    Scheduler,
    SchedulerConfig,
    Stage,
    StepOutput,
)

# A TTS engine that synthesizes 1000 characters per second, batched or not.
TTS_COST = CostModelConfig(
    prior_fixed_s=0.0, prior_per_item_s=0.0, prior_per_unit_s=0.001, prior_weight=1e9
)


class Harness:
    """Calls that each ask for ``chars_per_s`` of TTS every 100 ms, served by a scheduler."""

    def __init__(self, admission: AdmissionConfig, chars_per_s: float = 100.0) -> None:
        self.sched = Scheduler(
            Engine.TTS,
            SchedulerConfig(max_batch=1, explore_every=0, load_window_s=2.0, cost_model=TTS_COST),
        )
        self.admission = AdmissionController(admission)
        self.calls: list[str] = []
        self.chars = chars_per_s * 0.1
        self.now = 0.0
        self._ids = itertools.count()

    def offer_call(self) -> bool:
        call = f"call{next(self._ids)}"
        decision = self.admission.admit_call(call, self.now)
        if decision.accepted:
            self.calls.append(call)
        else:
            self.refusal = decision.reason
        return decision.accepted

    def end_call(self) -> None:
        self.admission.release_call(self.calls.pop())

    def tick(self, seconds: float) -> None:
        """Run ``seconds`` of virtual time in 100 ms ticks; post stats after each."""
        for _ in range(round(seconds / 0.1)):
            for call in self.calls:
                rid = f"r{next(self._ids)}"
                r = Request(rid, call, Stage.TTS_REST, self.now, self.now + 1.0, self.chars)
                self.sched.add_request(r, self.now)
            t = self.now
            while batch := self.sched.schedule(t):
                step_s = 0.001 * batch.units
                t += step_s
                outs = [StepOutput(r.request_id, done=True) for r in batch.requests]
                self.sched.update_from_output(batch, outs, step_s, t)
            assert t <= self.now + 0.1, "the synthetic engine fell behind: admission failed"
            self.now += 0.1
            self.admission.update(self.sched.stats(self.now))


def test_refuses_beyond_capacity_and_recovers() -> None:
    h = Harness(AdmissionConfig(max_load=0.8, tts_units_per_call_s=50.0))
    h.admission.update(h.sched.stats(0.0))
    accepted = 0
    for _ in range(20):  # a new call is offered every 2 s
        accepted += h.offer_call()
        h.tick(2.0)
    # Each call needs 10 % of the engine: 8 calls reach the 80 % limit.
    assert accepted == len(h.calls) == 8
    assert "overloaded" in h.refusal and "tts engine" in h.refusal
    assert 0.75 <= h.admission.load(h.now) <= 0.85
    assert not h.admission.accepting(h.now)
    for _ in range(4):
        h.end_call()
    h.tick(10.0)  # the work rate decays over a few load windows
    assert h.admission.load(h.now) == pytest.approx(0.4, abs=0.05)
    assert h.offer_call() and h.offer_call()


def test_prior_keeps_a_burst_from_overrunning_an_idle_engine() -> None:
    h = Harness(AdmissionConfig(max_load=0.8, tts_units_per_call_s=200.0))
    h.admission.update(h.sched.stats(0.0))
    # Nobody has spoken yet, but each call is expected to need 20 % of the engine.
    assert [h.offer_call() for _ in range(6)] == [True] * 4 + [False] * 2


def test_call_limit() -> None:
    ac = AdmissionController(AdmissionConfig(max_calls=2))
    assert ac.admit_call("a", 0.0).accepted and ac.admit_call("b", 0.0).accepted
    d = ac.admit_call("c", 0.0)
    assert not d.accepted and "max_calls=2" in d.reason
    assert ac.load(0.0) == 1.0
    assert ac.admit_call("a", 0.0).accepted  # already admitted: not a new call
    assert ac.release_call("a") and not ac.release_call("a")
    assert ac.admit_call("c", 0.0).accepted


def stats(engine: Engine, *, waiting: int = 0, work: float = 0.0, at: float = 0.0) -> EngineStats:
    return EngineStats(
        engine=engine,
        mode="deadline",
        waiting=waiting,
        active=0,
        max_waiting=10,
        slots=8,
        steps=0,
        finished=0,
        failed=0,
        cancelled=0,
        coalesced=0,
        refused=0,
        deadline_misses=0,
        misses_by_stage=(),
        last_batch_size=0,
        last_step_s=0.0,
        capacity_units_per_s=100.0,
        work_units_per_s=work,
        load_window_s=5.0,
        at=at,
    )


def test_a_full_queue_refuses_new_calls() -> None:
    ac = AdmissionController()
    ac.update(stats(Engine.STT, waiting=10))
    d = ac.admit_call("x", 0.0)
    assert not d.accepted and "stt queue is full" in d.reason
    assert ac.load(0.0) == 1.0


def test_load_is_the_worst_engine_and_decays_when_an_engine_goes_idle() -> None:
    ac = AdmissionController()
    ac.update(stats(Engine.STT, work=30.0))
    ac.update(stats(Engine.LLM, work=70.0, waiting=2))
    assert ac.load(0.0) == pytest.approx(0.7)
    assert ac.load(5.0) == pytest.approx(0.7 / 2.718281828, rel=1e-3)
    ac.update(stats(Engine.LLM, work=90.0, at=-1.0))  # an older snapshot changes nothing
    assert ac.load(0.0) == pytest.approx(0.7)
    assert ac.utilization(Engine.TTS, 0.0) == 0.0  # no stats: no such engine here
