"""An engine that cannot serve makes readiness say so (owner thread dead, stuck in a step, every
step failing), and fault injection drives each of those through the real runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from worker.inference.faults import FaultInjector
from worker.inference.runtime import EngineNotReady, Overloaded, WorkState
from worker.inference.scheduled import ScheduledRunner, StepItem
from worker.inference.scheduler import (
    CallClock,
    DeadlineConfig,
    Engine,
    SchedulerConfig,
    Stage,
    StepOutput,
    make_scheduler,
)


class OneStepEngine:
    """Finishes every request in one step."""

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        return [StepOutput(it.rid, done=True, units=1.0) for it in items]

    def result(self, rid: str) -> Any:
        return rid

    def release(self, rid: str) -> None:
        pass


def _runner(faults: FaultInjector, *, stuck_step_s: float = 10.0) -> ScheduledRunner[int, str]:
    cfg = SchedulerConfig(max_batch=4, max_waiting=8, explore_every=0)
    runner: ScheduledRunner[int, str] = ScheduledRunner(
        "llm",
        OneStepEngine,
        make_scheduler(Engine.LLM, cfg, "deadline"),
        CallClock(DeadlineConfig(), max_calls=16),
        max_inbox=8,
        faults=faults,
        stuck_step_s=stuck_step_s,
        failed_steps_unready=3,
    )
    runner.start()
    return runner


async def _run_one(runner: ScheduledRunner[int, str], n: int = 0) -> WorkState:
    work = runner.submit(1, stream_id=f"s{n}", call_id="c", stage=Stage.LLM_FIRST_CLAUSE)
    return (await asyncio.wait_for(work.wait(), 5)).state


async def _until(predicate: Any, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_healthy_engine_has_no_problem() -> None:
    runner = _runner(FaultInjector())
    try:
        await runner.wait_loaded()
        assert await _run_one(runner) == WorkState.FINISHED
        assert runner.problem() is None and runner.ready
    finally:
        runner.stop()


async def test_a_dead_owner_thread_is_reported_and_refuses_work() -> None:
    faults = FaultInjector()
    runner = _runner(faults)
    await runner.wait_loaded()
    faults.arm("llm", "kill_owner", 1)
    # The work in the dying step fails (a client must not take it for a normal end).
    assert await _run_one(runner) == WorkState.FAILED
    await _until(lambda: not runner.ready)
    assert "owner thread died" in (runner.problem() or "")
    with pytest.raises(EngineNotReady):
        runner.submit(1, stream_id="late", call_id="c", stage=Stage.LLM_FIRST_CLAUSE)


async def test_failing_every_step_turns_unready_and_one_success_heals() -> None:
    faults = FaultInjector()
    runner = _runner(faults)
    try:
        await runner.wait_loaded()
        faults.arm("llm", "fail_steps")
        for n in range(3):
            assert await _run_one(runner, n) == WorkState.FAILED
        assert runner.problem() == "the last 3 steps failed"
        faults.disarm()
        assert await _run_one(runner, 9) == WorkState.FINISHED
        assert runner.problem() is None
    finally:
        runner.stop()


async def test_a_hung_step_is_reported_stuck() -> None:
    faults = FaultInjector()
    runner = _runner(faults, stuck_step_s=0.3)
    try:
        await runner.wait_loaded()
        faults.arm("llm", "hang", 1)
        work = runner.submit(1, stream_id="s", call_id="c", stage=Stage.LLM_FIRST_CLAUSE)
        await _until(lambda: runner.problem() is not None)
        assert "stuck in one step" in (runner.problem() or "")
        faults.disarm()  # releases the hung step
        assert (await asyncio.wait_for(work.wait(), 5)).state == WorkState.FINISHED
        assert runner.problem() is None
    finally:
        faults.disarm()
        runner.stop()


async def test_injected_overload_refuses_the_next_submissions_only() -> None:
    faults = FaultInjector()
    runner = _runner(faults)
    try:
        await runner.wait_loaded()
        faults.arm("llm", "overload", 2)
        for _ in range(2):
            with pytest.raises(Overloaded):
                runner.submit(1, stream_id="s", call_id="c", stage=Stage.LLM_FIRST_CLAUSE)
        assert await _run_one(runner) == WorkState.FINISHED
    finally:
        runner.stop()


def test_fault_requests_are_validated() -> None:
    faults = FaultInjector()
    with pytest.raises(ValueError, match="unknown fault"):
        faults.arm("llm", "explode")
    with pytest.raises(ValueError, match="count"):
        faults.arm("llm", "hang", 0)
    assert faults.armed() == {}


def test_the_server_refuses_fault_injection_unless_started_with_it(inference_server: Any) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        inference_server.url + "/v1/faults",
        data=b'{"engine": "llm", "fault": "hang"}',
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 404
