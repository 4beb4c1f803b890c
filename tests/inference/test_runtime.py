"""Engine owner threads with a fake engine: ordering, admission, cancellation, failures."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from worker.inference.runtime import (
    EngineLoadError,
    EngineNotReady,
    EngineRunner,
    FifoPolicy,
    Overloaded,
    Partial,
    Terminal,
    Work,
    WorkContext,
    WorkState,
)


class FakeEngine:
    """Records what it ran; ``gate`` holds an item running until the test releases it."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.steps = 0


def execute(engine: FakeEngine, payload: str, ctx: WorkContext) -> str:
    engine.ran.append(payload)
    if payload == "block":
        engine.entered.set()
        engine.gate.wait(5)
    elif payload == "fail":
        raise RuntimeError("engine exploded")
    elif payload == "stream":
        # Like the LLM: one step at a time, checking the cancel flag before each.
        while not ctx.cancelled() and engine.steps < 10_000:
            engine.steps += 1
            if engine.steps <= 3:
                ctx.emit(f"tok{engine.steps}")
            engine.gate.wait(0.001)
    return payload.upper()


async def _runner(max_queue: int = 8) -> tuple[EngineRunner[FakeEngine, str, str], FakeEngine]:
    engine = FakeEngine()
    runner: EngineRunner[FakeEngine, str, str] = EngineRunner(
        "fake", lambda: engine, execute, max_queue=max_queue
    )
    runner.start()
    await runner.wait_loaded()
    return runner, engine


def test_serial_policy_runs_critical_work_first_then_fifo() -> None:
    loop = asyncio.new_event_loop()
    try:
        policy = FifoPolicy()

        def work(name: str, critical: bool) -> Work[str, str]:
            return Work(name, "s", critical, 0, loop)

        items = [
            work("slack1", False),
            work("crit1", True),
            work("slack2", False),
            work("crit2", True),
        ]
        for item in items:
            policy.add(item)
        assert policy.remove(items[2]) is True
        assert policy.remove(items[2]) is False
        order = []
        while (picked := policy.pick()) is not None:
            order.append(picked.payload)
        assert order == ["crit1", "crit2", "slack1"]
    finally:
        loop.close()


async def test_results_and_partials_arrive_in_order() -> None:
    runner, engine = await _runner()
    try:
        a = runner.submit("a", stream_id="s1")
        b = runner.submit("b", stream_id="s2")
        assert (await a.wait()) == Terminal(WorkState.FINISHED, result="A")
        assert (await b.wait()).result == "B"
        assert engine.ran == ["a", "b"]
    finally:
        runner.stop()


async def test_queue_is_bounded_and_cancelling_a_waiting_item_frees_its_slot() -> None:
    runner, engine = await _runner(max_queue=2)
    try:
        blocker = runner.submit("block", stream_id="s0")
        await asyncio.to_thread(engine.entered.wait, 5)
        w1 = runner.submit("w1", stream_id="s1")
        w2 = runner.submit("w2", stream_id="s2")
        with pytest.raises(Overloaded):
            runner.submit("w3", stream_id="s3")
        w1.cancel()
        assert (await w1.wait()).state == WorkState.CANCELLED
        assert runner.queue_depth == 1
        w3 = runner.submit("w3", stream_id="s3")
        engine.gate.set()
        assert (await blocker.wait()).state == WorkState.FINISHED
        assert (await w2.wait()).result == "W2"
        assert (await w3.wait()).result == "W3"
        assert engine.ran == ["block", "w2", "w3"]  # the cancelled item never reached the engine
    finally:
        runner.stop()


async def test_cancel_stops_a_running_item_at_its_next_step() -> None:
    runner, engine = await _runner()
    try:
        work = runner.submit("stream", stream_id="s1", max_partials=3)
        seen: list[str] = []
        while len(seen) < 3:
            event = await asyncio.wait_for(work.next_event(), 5)
            assert isinstance(event, Partial)
            seen.append(event.value)
        work.cancel()
        terminal = await asyncio.wait_for(work.wait(), 5)
        assert terminal.state == WorkState.CANCELLED
        steps_at_end = engine.steps
        assert steps_at_end < 10_000
        await asyncio.sleep(0.05)
        assert engine.steps == steps_at_end  # nothing runs after the cancel took effect
        assert seen == ["tok1", "tok2", "tok3"]
        assert not runner.busy
    finally:
        runner.stop()


async def test_a_failing_item_fails_alone() -> None:
    runner, _engine = await _runner()
    try:
        bad = runner.submit("fail", stream_id="s1")
        good = runner.submit("ok", stream_id="s2")
        failed = await bad.wait()
        assert failed.state == WorkState.FAILED
        assert isinstance(failed.error, RuntimeError)
        assert (await good.wait()).result == "OK"
    finally:
        runner.stop()


async def test_a_load_failure_is_reported_and_refuses_work() -> None:
    def load() -> Any:
        raise FileNotFoundError("no such model: /x.gguf")

    runner: EngineRunner[Any, str, str] = EngineRunner("broken", load, execute, max_queue=1)
    runner.start()
    with pytest.raises(EngineLoadError, match="no such model"):
        await runner.wait_loaded()
    assert not runner.ready
    with pytest.raises(EngineNotReady):
        runner.submit("a", stream_id="s")
    runner.stop()


async def test_stop_cancels_waiting_work() -> None:
    runner, engine = await _runner()
    blocker = runner.submit("block", stream_id="s0")
    await asyncio.to_thread(engine.entered.wait, 5)
    waiting = runner.submit("later", stream_id="s1")
    stopping = asyncio.create_task(asyncio.to_thread(runner.stop))
    # stop() flags the running item first; only then let the blocker return.
    await asyncio.to_thread(blocker._cancel.wait, 5)
    engine.gate.set()
    await stopping
    assert (await blocker.wait()).state == WorkState.CANCELLED
    assert (await waiting.wait()).state == WorkState.CANCELLED
    assert engine.ran == ["block"]
