"""Scheduler core on virtual time with hand-built engine outputs: no models, no clock, no I/O."""

from __future__ import annotations

import itertools

import pytest

from worker.inference.scheduler import (
    Batch,
    CostModel,
    CostModelConfig,
    Engine,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    SchedulerFullError,
    SerialPolicy,
    Stage,
    StepOutput,
    make_scheduler,
)

# A cost model that knows batching never pays (10 ms per item): batches of one, so the order of
# steps is the order of priority. Exploration off so that nothing varies the batch size.
NO_BATCHING = CostModelConfig(prior_fixed_s=0.0, prior_per_item_s=0.010, prior_weight=1e6)
# A cost model sure that batching pays (a step costs ~20 ms whatever its size).
FLAT = CostModelConfig(prior_fixed_s=0.020, prior_per_item_s=0.0001, prior_weight=1e6)

_ids = itertools.count()


def req(
    stage: Stage,
    deadline: float,
    *,
    call: str = "c1",
    arrival: float = 0.0,
    units: float = 1.0,
    key: str | None = None,
    rid: str | None = None,
) -> Request:
    if stage is Stage.STT_INTERIM and key is None:
        key = f"stream-{call}"
    return Request(
        request_id=rid or f"r{next(_ids)}",
        call_id=call,
        stage=stage,
        arrival=arrival,
        deadline=deadline,
        units=units,
        coalesce_key=key,
    )


def sched(
    engine: Engine = Engine.LLM, cost: CostModelConfig = NO_BATCHING, **kw: object
) -> Scheduler:
    config = SchedulerConfig.model_validate({"explore_every": 0, "cost_model": cost, **kw})
    return Scheduler(engine, config)


def finish_all(s: Scheduler | SerialPolicy, batch: Batch, now: float, step_s: float = 0.01) -> None:
    outs = [StepOutput(r.request_id, done=True) for r in batch.requests]
    s.update_from_output(batch, outs, step_s, now)


def run_order(
    s: Scheduler | SerialPolicy, now: float = 0.0, step_s: float = 0.01
) -> list[list[str]]:
    """Run the scheduler to empty with single-step requests; the ids of each step's batch."""
    order: list[list[str]] = []
    for _ in range(100):
        batch = s.schedule(now)
        if not batch:
            return order
        order.append([r.request_id for r in batch.requests])
        now += step_s
        finish_all(s, batch, now, step_s)
    raise AssertionError("scheduler did not drain")


def test_earliest_deadline_first() -> None:
    s = sched(Engine.STT)
    for rid, deadline in [("late", 0.30), ("soon", 0.05), ("mid", 0.10)]:
        s.add_request(req(Stage.STT_FINAL, deadline, rid=rid, call=rid), now=0.0)
    assert run_order(s) == [["soon"], ["mid"], ["late"]]


def test_critical_work_goes_before_slack_work_with_an_earlier_deadline() -> None:
    s = sched(Engine.LLM)
    # The slack request arrived first and is due first, but its deadline is beyond the guard.
    s.add_request(req(Stage.LLM_REST, 0.40, rid="rest", call="a"), now=0.0)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.60, rid="first", call="b"), now=0.0)
    assert run_order(s) == [["first"], ["rest"]]


def test_slack_work_about_to_run_dry_counts_as_critical() -> None:
    s = sched(Engine.TTS, slack_guard_ms=50.0)
    # Only 30 ms of audio left for call a: its next clause is now on the critical path.
    s.add_request(req(Stage.TTS_REST, 0.030, rid="dry", call="a"), now=0.0)
    s.add_request(req(Stage.TTS_FIRST, 0.060, rid="first", call="b"), now=0.0)
    assert run_order(s) == [["dry"], ["first"]]


def test_newer_interim_replaces_the_waiting_one_of_the_same_stream() -> None:
    s = sched(Engine.STT)
    old = req(Stage.STT_INTERIM, 0.5, key="s1", rid="i1")
    other = req(Stage.STT_INTERIM, 0.5, key="s2", call="c2", rid="j1")
    assert s.add_request(old, 0.0) is None
    assert s.add_request(other, 0.0) is None
    new = req(Stage.STT_INTERIM, 0.6, key="s1", rid="i2")
    assert s.add_request(new, 0.1) == "i1"
    assert old.status is RequestStatus.CANCELLED
    assert s.coalesced == 1
    assert sorted(itertools.chain.from_iterable(run_order(s, 0.1))) == ["i2", "j1"]


def test_a_final_supersedes_the_waiting_interim_but_not_a_running_one() -> None:
    s = sched(Engine.STT)
    s.add_request(req(Stage.STT_INTERIM, 0.5, key="s1", rid="i1"), 0.0)
    batch = s.schedule(0.0)
    assert [r.request_id for r in batch.requests] == ["i1"]
    # i1 is running: a newer interim waits beside it instead of replacing it.
    assert s.add_request(req(Stage.STT_INTERIM, 0.6, key="s1", rid="i2"), 0.01) is None
    finish_all(s, batch, 0.02)
    # The final makes the waiting interim i2 useless.
    assert s.add_request(req(Stage.STT_FINAL, 0.07, key="s1", rid="f1"), 0.03) == "i2"
    assert run_order(s, 0.03) == [["f1"]]


def test_coalescing_can_be_disabled() -> None:
    s = sched(Engine.STT, coalesce_interims=False)
    s.add_request(req(Stage.STT_INTERIM, 0.5, key="s1", rid="i1"), 0.0)
    assert s.add_request(req(Stage.STT_INTERIM, 0.6, key="s1", rid="i2"), 0.1) is None
    assert run_order(s, 0.1) == [["i1"], ["i2"]]


def test_malformed_requests_are_refused() -> None:
    with pytest.raises(SchedulerError, match="coalesce_key"):
        Request("x", "c1", Stage.STT_INTERIM, arrival=0.0, deadline=1.0)
    with pytest.raises(SchedulerError, match="finite"):
        Request("x", "c1", Stage.STT_FINAL, arrival=0.0, deadline=float("nan"))
    with pytest.raises(SchedulerError, match="units"):
        Request("x", "c1", Stage.STT_FINAL, arrival=0.0, deadline=1.0, units=float("inf"))
    with pytest.raises(SchedulerError, match="call_id"):
        Request("x", "", Stage.STT_FINAL, arrival=0.0, deadline=1.0)


def test_cancelling_a_streaming_request_between_steps_frees_its_slot() -> None:
    s = sched(Engine.LLM, max_batch=4, max_active=1)
    a = req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="a", call="a")
    b = req(Stage.LLM_FIRST_CLAUSE, 0.3, rid="b", call="b")
    s.add_request(a, 0.0)
    s.add_request(b, 0.0)
    batch = s.schedule(0.0)
    assert [r.request_id for r in batch.requests] == ["a"]
    assert batch.new_ids == {"a"}
    s.update_from_output(batch, [StepOutput("a", units=1.0)], 0.01, 0.01)
    assert a.status is RequestStatus.STREAMING
    # The one slot is held by a: b cannot start, however many items a batch could hold.
    batch = s.schedule(0.01)
    assert [r.request_id for r in batch.requests] == ["a"]
    assert batch.new_ids == frozenset()
    s.update_from_output(batch, [StepOutput("a")], 0.01, 0.02)
    assert s.abort("a") is True
    assert a.status is RequestStatus.CANCELLED
    batch = s.schedule(0.02)
    assert batch.release_ids == ("a",)  # the engine frees a's KV cells before this step
    assert [r.request_id for r in batch.requests] == ["b"]
    assert s.num_active == 1


def test_abort_during_a_step_drops_its_output_and_frees_the_slot() -> None:
    s = sched(Engine.LLM, max_batch=4, max_active=1)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="a", call="a"), 0.0)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.3, rid="b", call="b"), 0.0)
    batch = s.schedule(0.0)
    assert s.abort("a") is True
    assert s.get("a") is not None and s.get("a").status is RequestStatus.RUNNING  # type: ignore[union-attr]
    result = s.update_from_output(batch, [StepOutput("a", done=True)], 0.01, 0.01)
    assert result.cancelled == ("a",) and result.finished == ()
    assert s.finished == 0 and s.cancelled == 1
    assert [r.request_id for r in s.schedule(0.01).requests] == ["b"]


def test_abort_of_waiting_unknown_and_done_requests() -> None:
    s = sched(Engine.TTS)
    s.add_request(req(Stage.TTS_REST, 2.0, rid="w"), 0.0)
    assert s.abort("w") is True
    assert s.abort("w") is False
    assert s.abort("never-seen") is False
    assert not s.schedule(0.0)
    assert s.schedule(0.0).release_ids == ()  # a waiting request held no engine state


def test_abort_call_cancels_every_request_of_the_call() -> None:
    s = sched(Engine.TTS)
    for rid, call in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        s.add_request(req(Stage.TTS_REST, 2.0, rid=rid, call=call), 0.0)
    assert sorted(s.abort_call("a")) == ["a1", "a2"]
    assert run_order(s) == [["b1"]]


def test_queue_is_bounded_and_refusal_loses_nothing() -> None:
    s = sched(Engine.TTS, max_waiting=2, max_waiting_per_call=8)
    s.add_request(req(Stage.TTS_REST, 1.0, rid="x1", call="x"), 0.0)
    s.add_request(req(Stage.TTS_REST, 1.0, rid="y1", call="y"), 0.0)
    with pytest.raises(SchedulerFullError, match="max_waiting=2"):
        s.add_request(req(Stage.TTS_FIRST, 0.1, rid="z1", call="z"), 0.0)
    assert s.refused == 1 and s.num_waiting == 2
    assert sorted(itertools.chain.from_iterable(run_order(s))) == ["x1", "y1"]
    s.add_request(req(Stage.TTS_FIRST, 0.1, rid="z1", call="z"), 1.0)  # recovered
    assert run_order(s, 1.0) == [["z1"]]


def test_one_call_cannot_fill_the_queue() -> None:
    s = sched(Engine.TTS, max_waiting=10, max_waiting_per_call=2)
    s.add_request(req(Stage.TTS_REST, 1.0, call="greedy"), 0.0)
    s.add_request(req(Stage.TTS_REST, 1.0, call="greedy"), 0.0)
    with pytest.raises(SchedulerFullError, match="call greedy"):
        s.add_request(req(Stage.TTS_REST, 1.0, call="greedy"), 0.0)
    s.add_request(req(Stage.TTS_REST, 1.0, call="polite"), 0.0)
    assert s.num_waiting == 3


def test_replacing_an_interim_is_not_refused_at_the_bound() -> None:
    s = sched(Engine.STT, max_waiting=1)
    s.add_request(req(Stage.STT_INTERIM, 0.5, key="s1", rid="i1"), 0.0)
    assert s.add_request(req(Stage.STT_INTERIM, 0.6, key="s1", rid="i2"), 0.1) == "i1"


def test_aging_keeps_slack_work_from_starving_under_sustained_critical_load() -> None:
    s = sched(Engine.LLM, aging_ms=500.0)
    s.add_request(req(Stage.LLM_REST, 5.0, rid="patient", call="z"), 0.0)
    now, served_at = 0.0, None
    for i in range(300):  # a fresh critical request every step, for 3 s of virtual time
        s.add_request(req(Stage.LLM_FIRST_CLAUSE, now + 0.15, call=f"c{i}", arrival=now), now)
        batch = s.schedule(now)
        now += 0.01
        if any(r.request_id == "patient" for r in batch.requests):
            served_at = now
        finish_all(s, batch, now)
    assert served_at is not None, "slack request starved"
    assert served_at <= 0.5 + 0.02


def test_no_call_starves_when_load_exceeds_capacity() -> None:
    s = sched(Engine.TTS, max_waiting=64)
    calls = [f"c{i}" for i in range(6)]
    served = dict.fromkeys(calls, 0)
    longest_wait = dict.fromkeys(calls, 0.0)
    now = 0.0
    for call in calls:  # each call always has one request waiting: the engine is saturated
        s.add_request(req(Stage.TTS_FIRST, now + 0.06, call=call, arrival=now), now)
    for _ in range(600):
        batch = s.schedule(now)
        now += 0.01
        finish_all(s, batch, now)
        for r in batch.requests:
            served[r.call_id] += 1
            longest_wait[r.call_id] = max(longest_wait[r.call_id], now - r.arrival)
            s.add_request(req(Stage.TTS_FIRST, now + 0.06, call=r.call_id, arrival=now), now)
    assert max(served.values()) - min(served.values()) <= 1
    assert max(longest_wait.values()) <= 0.07  # 6 calls x 10 ms steps, plus the own step


def test_batch_size_is_the_largest_that_meets_the_head_deadline() -> None:
    cost = CostModelConfig(prior_fixed_s=0.010, prior_per_item_s=0.005, prior_weight=1e6)
    s = sched(Engine.STT, cost=cost, max_batch=8)
    for i in range(8):
        s.add_request(req(Stage.STT_FINAL, 0.031 + i * 0.01, call=f"c{i}"), 0.0)
    # predict(b) = 10 ms + 5 ms * b: b = 4 takes 30 ms, b = 5 35 ms > the 31 ms head deadline.
    assert s.schedule(0.0).size == 4


def test_batch_fills_up_when_deadlines_allow_and_batching_pays() -> None:
    s = sched(Engine.STT, cost=FLAT, max_batch=8)
    for i in range(12):
        s.add_request(req(Stage.STT_INTERIM, 0.5, call=f"c{i}"), 0.0)
    batch = s.schedule(0.0)
    assert batch.size == 8
    assert batch.predicted_step_s == pytest.approx(0.0208, rel=0.01)


def test_no_batching_when_it_does_not_pay() -> None:
    s = sched(Engine.TTS, cost=NO_BATCHING, max_batch=8)
    for i in range(8):
        s.add_request(req(Stage.TTS_REST, 5.0, call=f"c{i}"), 0.0)
    assert s.schedule(0.0).size == 1


def test_late_head_gets_the_paying_batch() -> None:
    cost = CostModelConfig(prior_fixed_s=0.050, prior_per_item_s=0.001, prior_weight=1e6)
    s = sched(Engine.LLM, cost=cost, max_batch=4)
    for i in range(6):
        s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.01, call=f"c{i}"), 0.0)
    # Even alone the head misses (50 ms step, 10 ms deadline): serve as many as batching pays.
    assert s.schedule(0.0).size == 4


def test_llm_moves_from_first_clause_to_rest_with_playout_slack() -> None:
    s = sched(Engine.LLM)
    r = req(Stage.LLM_FIRST_CLAUSE, 0.19, rid="g")
    s.add_request(r, 0.0)
    batch = s.schedule(0.0)
    result = s.update_from_output(batch, [StepOutput("g", units=1.0)], 0.05, 0.05)
    assert result.streaming == ("g",) and r.stage is Stage.LLM_FIRST_CLAUSE
    batch = s.schedule(0.05)
    out = StepOutput("g", next_stage=Stage.LLM_REST, slack_s=1.2)
    result = s.update_from_output(batch, [out], 0.05, 0.10)
    assert result.late == ()
    assert r.stage is Stage.LLM_REST and r.deadline == pytest.approx(1.30)
    assert r.stage_done_at is None
    batch = s.schedule(0.10)
    result = s.update_from_output(batch, [StepOutput("g", done=True)], 0.05, 2.0)
    assert result.late == ("g",) and result.finished == ("g",)
    assert dict(s.stats(2.0).misses_by_stage) == {Stage.LLM_REST: 1}


def test_a_late_first_clause_is_a_deadline_miss() -> None:
    s = sched(Engine.LLM)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.19, rid="g"), 0.0)
    batch = s.schedule(0.0)
    out = StepOutput("g", next_stage=Stage.LLM_REST, slack_s=1.0)
    assert s.update_from_output(batch, [out], 0.3, 0.3).late == ("g",)
    assert s.deadline_misses == 1


def test_engine_errors_fail_only_their_request() -> None:
    s = sched(Engine.STT, cost=FLAT)
    for rid in ("ok", "bad", "silent"):
        s.add_request(req(Stage.STT_FINAL, 0.2, rid=rid, call=rid), 0.0)
    batch = s.schedule(0.0)
    assert batch.size == 3
    outs = [StepOutput("ok", done=True), StepOutput("bad", error="decoder exploded")]
    result = s.update_from_output(batch, outs, 0.02, 0.02)
    assert result.finished == ("ok",)
    assert sorted(result.failed) == ["bad", "silent"]
    assert s.failed == 2 and s.num_active == 0


def test_contract_violations_are_clear_errors_that_change_nothing() -> None:
    s = sched(Engine.LLM)
    with pytest.raises(SchedulerError, match="belongs to the tts engine"):
        s.add_request(req(Stage.TTS_FIRST, 0.1), 0.0)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="a"), 0.0)
    with pytest.raises(SchedulerError, match="already queued"):
        s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="a"), 0.0)
    batch = s.schedule(0.0)
    with pytest.raises(SchedulerError, match="still running"):
        s.schedule(0.0)
    with pytest.raises(SchedulerError, match="not in this batch"):
        s.update_from_output(batch, [StepOutput("zzz", done=True)], 0.01, 0.01)
    with pytest.raises(SchedulerError, match="two outputs"):
        s.update_from_output(batch, [StepOutput("a"), StepOutput("a")], 0.01, 0.01)
    with pytest.raises(SchedulerError, match="needs slack_s"):
        s.update_from_output(batch, [StepOutput("a", next_stage=Stage.LLM_REST)], 0.01, 0.01)
    with pytest.raises(SchedulerError, match="turn deadline"):
        s.update_from_output(batch, [StepOutput("a", slack_s=1.0)], 0.01, 0.01)
    with pytest.raises(SchedulerError, match="cannot move"):
        out = StepOutput("a", next_stage=Stage.TTS_REST, slack_s=1.0)
        s.update_from_output(batch, [out], 0.01, 0.01)
    with pytest.raises(SchedulerError, match="step time"):
        s.update_from_output(batch, [StepOutput("a", done=True)], float("nan"), 0.01)
    # Nothing changed: the real report is still accepted.
    assert s.update_from_output(batch, [StepOutput("a", done=True)], 0.01, 0.01).finished == ("a",)
    with pytest.raises(SchedulerError, match="not the step in flight"):
        s.update_from_output(batch, [], 0.01, 0.01)


def test_serial_policy_is_fifo_one_at_a_time_ignoring_deadlines() -> None:
    s = make_scheduler(Engine.STT, SchedulerConfig(max_batch=8), mode="serial")
    assert isinstance(s, SerialPolicy)
    s.add_request(req(Stage.STT_INTERIM, 5.0, rid="first", key="k1"), 0.0)
    s.add_request(req(Stage.STT_FINAL, 0.04, rid="urgent", call="c2"), 0.0)
    s.add_request(req(Stage.STT_FINAL, 0.08, rid="third", call="c3"), 0.0)
    # 30 ms steps: the final due at 40 ms ends at 60 ms, the one due at 80 ms at 90 ms.
    assert run_order(s, step_s=0.03) == [["first"], ["urgent"], ["third"]]
    assert s.deadline_misses == 2  # deadlines are still measured, never used
    assert s.stats(1.0).mode == "serial"


def test_serial_policy_runs_a_stream_to_its_end_before_the_next() -> None:
    s = make_scheduler(Engine.LLM, mode="serial")
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="a", call="a"), 0.0)
    s.add_request(req(Stage.LLM_FIRST_CLAUSE, 0.2, rid="b", call="b"), 0.0)
    steps: list[str] = []
    now = 0.0
    while batch := s.schedule(now):
        rid = batch.requests[0].request_id
        steps.append(rid)
        now += 0.01
        done = rid == "b" or steps.count("a") == 3
        s.update_from_output(batch, [StepOutput(rid, done=done)], 0.01, now)
    assert steps == ["a", "a", "a", "b"]


def test_make_scheduler_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown scheduling mode"):
        make_scheduler(Engine.STT, mode="fastest")  # type: ignore[arg-type]
    assert isinstance(make_scheduler(Engine.STT), Scheduler)


def test_stats_report_queue_work_rate_and_capacity() -> None:
    s = sched(Engine.TTS, cost=NO_BATCHING)
    for i in range(5):
        s.add_request(req(Stage.TTS_REST, 5.0, call=f"c{i}", units=20.0), 0.0)
    st = s.stats(0.0)
    assert (st.waiting, st.active, st.engine, st.work_units_per_s) == (5, 0, Engine.TTS, 0.0)
    batch = s.schedule(0.0)
    assert s.stats(0.0).active == 1 and s.stats(0.0).waiting == 4
    finish_all(s, batch, 0.2, 0.2)
    st = s.stats(0.2)
    assert st.finished == 1 and st.steps == 1 and st.last_batch_size == 1
    assert st.work_units_per_s == pytest.approx(20.0 / s.config.load_window_s, rel=0.05)
    assert st.capacity_units_per_s > 0
    # 1 unit per item at 10 ms: the prior says 100 units/s at best.
    assert CostModel(NO_BATCHING, max_batch=8).capacity_units_per_s(8) == pytest.approx(100.0)
