"""ScheduledRunner (deadline mode's engine owner thread) with a scripted engine: batches come
from the scheduler, aborts reach the engine between steps, queues are bounded, an engine error
fails only its batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference.jobs import EngineSet
from worker.inference.runtime import EngineRunner, Overloaded, Partial, Terminal, WorkState
from worker.inference.scheduled import ScheduledRunner, StepItem
from worker.inference.scheduler import (
    CallClock,
    DeadlineConfig,
    Engine,
    SchedulerConfig,
    SchedulingConfig,
    Stage,
    StepOutput,
    make_scheduler,
)


class ScriptedEngine:
    """Each request streams ``payload`` tokens, one per step; the log records every call."""

    def __init__(self) -> None:
        self.log: list[tuple[str, tuple[str, ...]]] = []
        self.left: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        # When set, each step takes one ticket: a test can let exactly N steps run, so what it
        # does between them does not race the engine thread.
        self.tickets: threading.Semaphore | None = None
        self.fail_next = False

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        self.gate.wait(10)
        if self.tickets is not None:
            self.tickets.acquire(timeout=10)
        self.log.append(("step", tuple(it.rid for it in items)))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("scripted failure")
        outs = []
        for it in items:
            left = self.left.setdefault(it.rid, int(it.work.payload))
            it.work._post_partial(f"{it.rid}:{left}")
            self.left[it.rid] = left - 1
            outs.append(StepOutput(it.rid, done=left == 1, units=1.0))
        return outs

    def result(self, rid: str) -> Any:
        return f"done {rid}"

    def release(self, rid: str) -> None:
        self.log.append(("release", (rid,)))
        self.left.pop(rid, None)


def _runner(
    engine: ScriptedEngine, *, max_waiting: int = 8, max_batch: int = 4
) -> ScheduledRunner[int, str]:
    cfg = SchedulerConfig(max_batch=max_batch, max_waiting=max_waiting, explore_every=0)
    return ScheduledRunner(
        "llm",
        lambda: engine,
        make_scheduler(Engine.LLM, cfg, "deadline"),
        CallClock(DeadlineConfig(), max_calls=16),
        max_inbox=8,
    )


async def _collect(work: Any) -> tuple[list[Any], Terminal[Any]]:
    partials = []
    async with asyncio.timeout(10):
        while True:
            event = await work.next_event()
            if isinstance(event, Partial):
                partials.append(event.value)
            else:
                return partials, event


async def test_requests_stream_to_the_end_and_release_their_slot() -> None:
    engine = ScriptedEngine()
    runner = _runner(engine)
    runner.start()
    await runner.wait_loaded()
    try:
        works = [
            runner.submit(
                3,
                stream_id=f"s{i}",
                max_partials=4,
                call_id=f"c{i}",
                stage=Stage.LLM_FIRST_CLAUSE,
            )
            for i in range(3)
        ]
        results = await asyncio.gather(*(_collect(w) for w in works))
        for w, (partials, end) in zip(works, results, strict=True):
            rid = f"llm-{w.id}"
            assert partials == [f"{rid}:3", f"{rid}:2", f"{rid}:1"]
            assert end.state == WorkState.FINISHED and end.result == f"done {rid}"
            assert ("release", (rid,)) in engine.log
        await asyncio.sleep(0.05)
        assert not runner.busy and runner.queue_depth == 0
    finally:
        runner.stop()


async def test_cancel_reaches_the_engine_before_its_next_step() -> None:
    engine = ScriptedEngine()
    tickets = engine.tickets = threading.Semaphore(1)  # one step, then wait for the cancel
    runner = _runner(engine)
    runner.start()
    await runner.wait_loaded()
    try:
        long = runner.submit(
            1000, stream_id="a", max_partials=1001, call_id="a", stage=Stage.LLM_FIRST_CLAUSE
        )
        other = runner.submit(
            4, stream_id="b", max_partials=5, call_id="b", stage=Stage.LLM_FIRST_CLAUSE
        )
        first = await asyncio.wait_for(long.next_event(), 10)
        assert isinstance(first, Partial)
        long.cancel()
        tickets.release(2000)
        _partials, end = await _collect(long)
        assert end.state == WorkState.CANCELLED
        rid = f"llm-{long.id}"
        released_at = engine.log.index(("release", (rid,)))
        # Never stepped again once released; the other request is unaffected.
        assert all(rid not in ids for kind, ids in engine.log[released_at:] if kind == "step")
        partials, end_b = await _collect(other)
        assert end_b.state == WorkState.FINISHED and len(partials) == 4
        await asyncio.sleep(0.05)
        assert not runner.busy
    finally:
        runner.stop()


async def test_full_queue_is_refused_at_once_and_nothing_is_lost() -> None:
    engine = ScriptedEngine()
    engine.gate.clear()  # hold the first step so work piles up
    runner = _runner(engine, max_waiting=2, max_batch=1)
    runner.start()
    await runner.wait_loaded()
    try:
        works = []
        with pytest.raises(Overloaded, match="queue is full"):
            for i in range(20):
                works.append(
                    runner.submit(
                        1,
                        stream_id=f"s{i}",
                        max_partials=2,
                        call_id=f"c{i}",
                        stage=Stage.LLM_FIRST_CLAUSE,
                    )
                )
        assert 1 <= len(works) < 20
        engine.gate.set()
        ends = [(await _collect(w))[1] for w in works]
        # Every accepted item ends: finished, or refused by the scheduler as overloaded.
        for end in ends:
            assert end.state == WorkState.FINISHED or isinstance(end.error, Overloaded), end
        assert any(end.state == WorkState.FINISHED for end in ends)
    finally:
        engine.gate.set()
        runner.stop()


async def test_engine_error_fails_its_batch_only() -> None:
    engine = ScriptedEngine()
    engine.fail_next = True
    runner = _runner(engine)
    runner.start()
    await runner.wait_loaded()
    try:
        bad = runner.submit(2, stream_id="x", max_partials=3, call_id="x", stage=Stage.LLM_REST)
        _p, end = await _collect(bad)
        assert end.state == WorkState.FAILED and "scripted failure" in str(end.error)
        assert ("release", (f"llm-{bad.id}",)) in engine.log  # its state is freed too
        good = runner.submit(2, stream_id="y", max_partials=3, call_id="y", stage=Stage.LLM_REST)
        _p, end = await _collect(good)
        assert end.state == WorkState.FINISHED
    finally:
        runner.stop()


async def test_stop_cancels_everything_unfinished() -> None:
    engine = ScriptedEngine()
    runner = _runner(engine)
    runner.start()
    await runner.wait_loaded()
    # Far more tokens than the scripted engine (tens of microseconds a step) can produce
    # before stop() lands on a busy 2-core box: 10_000 finished first in ~1 run of 4.
    work = runner.submit(
        10**9, stream_id="z", max_partials=10**9 + 1, call_id="z", stage=Stage.LLM_FIRST_CLAUSE
    )
    await asyncio.wait_for(work.next_event(), 10)
    t0 = time.monotonic()
    await asyncio.to_thread(runner.stop)
    assert time.monotonic() - t0 < 5
    end = await asyncio.wait_for(work.wait(), 10)
    assert end.state == WorkState.CANCELLED


def test_mode_switch_picks_the_runners(models: ResolvedModels) -> None:
    deadline = EngineSet(InferenceConfig(), models)
    assert deadline.mode == "deadline"
    assert all(isinstance(r, ScheduledRunner) for r in deadline.runners)
    serial_cfg = InferenceConfig(scheduler=SchedulingConfig(mode="serial"))
    serial = EngineSet(serial_cfg, models)
    assert serial.mode == "serial"
    assert all(isinstance(r, EngineRunner) for r in serial.runners)
    with pytest.raises(ValidationError, match="mode"):
        SchedulingConfig.model_validate({"mode": "fastest"})
