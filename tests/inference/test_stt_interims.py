"""STT interim coalescing with a fake engine behind the real runner and stream logic: one
interim in flight per stream, always on the newest audio, and never one for a flushed
utterance."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

from worker.config.inference import InferenceConfig, SttEngineConfig
from worker.inference.jobs import SttJob
from worker.inference.metrics import InferenceMetrics
from worker.inference.protocol import SttStart
from worker.inference.runtime import EngineRunner, WorkContext
from worker.inference.stream_io import StreamContext
from worker.inference.stt_stream import _SttStream


class FakeSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_str(self, data: str) -> None:
        self.sent.append(json.loads(data))


class FakeWhisper:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.heard: list[int] = []  # bytes of audio per transcription


def transcribe(engine: FakeWhisper, job: SttJob, ctx: WorkContext) -> str:
    engine.heard.append(len(job.pcm))
    engine.entered.release()
    engine.gate.wait(5)
    return f"{len(job.pcm)} bytes"


async def test_interims_are_coalesced_and_stale_ones_dropped() -> None:
    engine = FakeWhisper()
    runner: EngineRunner[FakeWhisper, SttJob, str] = EngineRunner(
        "stt", lambda: engine, transcribe, max_queue=8
    )
    runner.start()
    await runner.wait_loaded()
    ws = FakeSocket()
    config = InferenceConfig(stt=SttEngineConfig(interim_interval_ms=50))
    ctx = StreamContext(
        ws,  # type: ignore[arg-type]
        SimpleNamespace(stt=runner),  # type: ignore[arg-type]
        config,
        InferenceMetrics(),
        "s1",
    )
    stream = _SttStream(ctx, SttStart(op="stt", call_id="c"))
    try:
        stream.buffer += bytes(16_000)  # 0.5 s
        stream.maybe_interim()
        await asyncio.to_thread(engine.entered.acquire, True, 5)
        # More audio while the first interim runs: nothing new is queued behind it.
        await asyncio.sleep(0.06)
        stream.buffer += bytes(16_000)
        stream.maybe_interim()
        assert runner.queue_depth == 0 and engine.heard == [16_000]
        engine.gate.set()
        assert stream.interim_task is not None
        await stream.interim_task
        assert ws.sent == [{"type": "interim", "text": "16000 bytes", "audio_ms": 500}]

        # The next interim covers the newest audio, all of it.
        engine.gate.clear()
        await asyncio.sleep(0.06)
        stream.buffer += bytes(3_200)
        stream.maybe_interim()
        await asyncio.to_thread(engine.entered.acquire, True, 5)
        assert engine.heard == [16_000, 35_200]
        # The utterance is flushed while that interim still runs: its result is stale.
        task = stream.interim_task
        stream.flush()
        engine.gate.set()
        assert task is not None
        await task
        assert [m["type"] for m in ws.sent] == ["interim"]
        assert stream.segment == 1 and not stream.buffer
    finally:
        runner.stop()
