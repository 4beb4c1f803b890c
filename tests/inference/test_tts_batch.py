"""Batched Piper TTS with the bundled voice: one graph run for several clauses, each item
trimmed to its own length (the graph's per-item frame counts), equal to the clause spoken alone;
an unspeakable item stays empty; the deadline-mode runner batches clauses of several calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from worker.config.inference import ResolvedModels
from worker.inference.engines.tts import TtsEngine
from worker.inference.jobs import TtsAudio, TtsJob
from worker.inference.runtime import Terminal, WorkState
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
from worker.inference.step_engines import PiperStep

pytestmark = pytest.mark.integration

CLAUSES = [
    "Yes.",
    "Hello there, how are you today?",
    "Your appointment is confirmed for Tuesday at three in the afternoon.",
    "One moment please.",
]
# Measured with the bundled voice, noise scales at zero: batched items have exactly the length
# of the clause alone and differ by at most 9 int16 steps (float rounding of a different batch
# shape). A trim off by one hop changes the length; keeping padding also breaks the waveform.
MAX_ABS_DIFF = 64


@pytest.fixture(scope="module")
def engine(models: ResolvedModels) -> TtsEngine:
    return TtsEngine(
        models.tts_onnx, models.tts_config, device="cpu", threads=1, deterministic=True
    )


@pytest.fixture(scope="module")
def alone(engine: TtsEngine) -> dict[str, np.ndarray]:
    return {text: engine.synthesize(text) for text in CLAUSES}


def _assert_same(batched: np.ndarray, single: np.ndarray) -> None:
    assert batched.dtype == np.int16
    assert len(batched) == len(single) > 0
    diff = np.abs(batched.astype(np.int32) - single.astype(np.int32))
    assert int(diff.max()) <= MAX_ABS_DIFF
    assert float(np.corrcoef(batched, single)[0, 1]) > 0.9999


def test_batch_items_equal_each_clause_alone(
    engine: TtsEngine, alone: dict[str, np.ndarray]
) -> None:
    assert engine.batches_in_one_run  # else synthesize_batch falls back to one run per item
    lengths = {len(a) for a in alone.values()}
    assert len(lengths) == len(CLAUSES)  # different lengths, so padding really happens
    for text, audio in zip(CLAUSES, engine.synthesize_batch(CLAUSES), strict=True):
        _assert_same(audio, alone[text])


def test_unspeakable_item_is_empty_and_the_others_intact(
    engine: TtsEngine, alone: dict[str, np.ndarray]
) -> None:
    texts = [CLAUSES[1], "", CLAUSES[0], "   ", CLAUSES[2]]
    out = engine.synthesize_batch(texts)
    assert len(out) == len(texts)
    assert out[1].size == 0 and out[3].size == 0
    for i in (0, 2, 4):
        _assert_same(out[i], alone[texts[i]])
    nothing = engine.synthesize_batch(["", " "])
    assert len(nothing) == 2 and all(a.size == 0 for a in nothing)


def test_multi_sentence_text_is_batched_per_sentence(engine: TtsEngine) -> None:
    text = "Thanks for calling. How can I help?"
    [batched, other] = engine.synthesize_batch([text, CLAUSES[0]])
    _assert_same(batched, engine.synthesize(text))
    _assert_same(other, engine.synthesize(CLAUSES[0]))


def test_speed_must_be_positive(engine: TtsEngine) -> None:
    with pytest.raises(ValueError, match="speed"):
        engine.synthesize_batch(CLAUSES[:2], speed=0)


class GatedPiper(PiperStep):
    """Records the batch sizes; the first step waits for ``gate`` so later clauses queue up."""

    def __init__(self, engine: TtsEngine) -> None:
        super().__init__(engine)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(items))
        return super().step(items)


async def _end(work: Any) -> Terminal[Any]:
    async with asyncio.timeout(60):
        while True:
            event = await work.next_event()
            if isinstance(event, Terminal):
                return event


async def test_deadline_runner_batches_clauses_of_several_calls(
    engine: TtsEngine, alone: dict[str, np.ndarray]
) -> None:
    step = GatedPiper(engine)
    cfg = SchedulerConfig(max_batch=4, max_waiting=16, explore_every=0)
    runner: ScheduledRunner[TtsJob, TtsAudio] = ScheduledRunner(
        "tts",
        lambda: step,
        make_scheduler(Engine.TTS, cfg, "deadline"),
        CallClock(DeadlineConfig(), max_calls=16),
        max_inbox=16,
    )
    runner.start()
    await runner.wait_loaded()
    try:
        first = runner.submit(
            TtsJob(CLAUSES[3]), stream_id="s0", call_id="c0", stage=Stage.TTS_FIRST
        )
        assert await asyncio.to_thread(step.entered.wait, 10)
        works = [
            runner.submit(TtsJob(text), stream_id=f"s{i}", call_id=f"c{i}", stage=Stage.TTS_FIRST)
            for i, text in enumerate(CLAUSES, start=1)
        ]
        await asyncio.sleep(0.2)  # all four reach the scheduler while step one is held
        step.gate.set()
        ends = [await _end(w) for w in [first, *works]]
        for end, text in zip(ends, [CLAUSES[3], *CLAUSES], strict=True):
            assert end.state == WorkState.FINISHED and end.result is not None
            assert end.result.sample_rate == engine.sample_rate
            _assert_same(end.result.samples, alone[text])
        assert max(step.sizes) > 1, step.sizes
        assert sum(step.sizes) == len(CLAUSES) + 1
    finally:
        runner.stop()
