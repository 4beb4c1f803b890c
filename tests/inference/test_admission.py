"""Admission control on virtual time, fed by real schedulers running a synthetic engine."""

from __future__ import annotations

import dataclasses
import itertools
import math

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
from worker.inference.scheduler.admission import Decision
from worker.inference.scheduler.rates import DecayingRate

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


class Feed:
    """EngineStats as a scheduler posts them: a work rate averaged over ``tau`` (the scheduler's
    own :class:`DecayingRate`), one snapshot per step, a fixed capacity of 100 units/s."""

    def __init__(self, ac: AdmissionController, engine: Engine, tau: float = 1.0) -> None:
        self.ac, self.engine, self.tau = ac, engine, tau
        self.rate = DecayingRate(tau)
        self.steps = 0

    def step(self, at: float, batch: int, units: float) -> None:
        self.rate.add(at, units)
        self.steps += 1
        self.ac.update(
            dataclasses.replace(
                stats(self.engine, work=self.rate.per_second(at), at=at),
                steps=self.steps,
                last_batch_size=batch,
                load_window_s=self.tau,
            )
        )


def _prompt_burst(weight: float) -> tuple[AdmissionController, Decision]:
    ac = AdmissionController(
        AdmissionConfig(max_load=0.85, llm_units_per_call_s=1.0, llm_prefill_token_weight=weight)
    )
    for i in range(4):
        assert ac.admit_call(f"c{i}", 0.0).accepted
    feed = Feed(ac, Engine.LLM)
    # Four calls' 100-token prompts prefilled in one step (each emits its first token), then
    # four decode steps of one token per sequence.
    feed.step(0.10, batch=4, units=400.0)
    for k in range(1, 5):
        feed.step(0.10 + 0.02 * k, batch=4, units=4.0)
    return ac, ac.admit_call("new", 0.2)


def test_a_burst_of_prompts_counts_prefill_at_its_weight() -> None:
    ac, decision = _prompt_burst(weight=0.1)
    # Counted as tokens the burst reads about 4x the capacity. Weighted, the prefill step is
    # 4 x (1 + 0.1 x 99) = 43.6 decode tokens, each decode step 4: over the 1 s window at 0.18 s
    decode = sum(4.0 * math.exp(-(0.18 - t) / 1.0) for t in (0.12, 0.14, 0.16, 0.18))
    weighted = 43.6 * math.exp(-0.08) + decode
    assert ac.utilization(Engine.LLM, 0.18) == pytest.approx(weighted / 100, rel=1e-6)
    # ... 56 % of capacity for four calls: room for a fifth under max_load = 85 %.
    assert decision.accepted, decision.reason


def test_prompt_tokens_weighted_like_decode_tokens_refuse_the_next_call() -> None:
    ac, decision = _prompt_burst(weight=1.0)  # the old accounting
    assert ac.utilization(Engine.LLM, 0.18) > 3.5
    assert not decision.accepted and "llm engine" in decision.reason


def test_decode_only_work_is_not_reweighted() -> None:
    ac = AdmissionController(AdmissionConfig(llm_prefill_token_weight=0.1))
    feed = Feed(ac, Engine.LLM)
    for k in range(50):
        feed.step(0.02 * k, batch=2, units=2.0)
    assert ac.utilization(Engine.LLM, 0.98) == pytest.approx(feed.rate.per_second(0.98) / 100)


def test_work_of_calls_that_ended_is_not_charged_to_the_next_calls() -> None:
    ac = AdmissionController(AdmissionConfig(max_load=0.9, tts_units_per_call_s=1.0))
    feed = Feed(ac, Engine.TTS)
    calls = [f"old{i}" for i in range(8)]
    for call in calls:
        assert ac.admit_call(call, 0.0).accepted
    for k in range(1, 61):  # 6 s of 8 calls at 10 characters per second each: 80 % busy
        feed.step(0.1 * k, batch=1, units=8.0)
    assert 0.8 < ac.utilization(Engine.TTS, 6.0) < 0.85  # just after a step: a little above
    for call in calls:
        ac.release_call(call)
    # At once, while the work rate still reads over 80 %: each call costs 10.5 %, so eight fit
    # under max_load = 90 % and the ninth does not (charging the 80 % to the first new call
    # alone, as the projection did, refused the second).
    accepted = [ac.admit_call(f"new{i}", 6.01).accepted for i in range(10)]
    assert accepted == [True] * 8 + [False] * 2
