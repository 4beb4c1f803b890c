"""Deadline mode with the real bundled models: batched outputs equal unbatched ones (greedy), and
a cancelled LLM sequence never leaks into another call's output.

LLM: through the real server (scheduler + BatchedLlama), the same prompts run one at a time and
then concurrently; the concurrent run must really batch (checked on the batch size histogram).
STT: the server's WhisperStep adapter, several utterances in one step versus each alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from admitted_calls import admits_when_idle, admitted_calls

from worker.config.inference import InferenceConfig, LlmEngineConfig, ResolvedModels
from worker.inference.background import RunningServer, serve_in_thread
from worker.inference.engines.tts import TtsEngine
from worker.inference.engines.whisper_batch import BatchedWhisper
from worker.inference.jobs import SttJob
from worker.inference.runtime import Work
from worker.inference.scheduled import StepItem
from worker.inference.scheduler import Request, Stage
from worker.inference.step_engines import WhisperStep

pytestmark = pytest.mark.integration

TIMEOUT = 90
PROMPTS = [
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is a good name for a cat?",
    "Tell me a long story about a dragon in a castle.",
]


@pytest.fixture(scope="module")
def deadline_server(models: ResolvedModels) -> Iterator[RunningServer]:
    config = InferenceConfig(
        port=0,
        llm=LlmEngineConfig(n_ctx=1024, max_tokens=256),
        # Calls are admitted up front (tests/admitted_calls.py).
        scheduler=admits_when_idle({"max_batch": 4, "max_active": 6}, max_calls=16),
    )
    with serve_in_thread(config, models) as running:
        yield running


async def _metrics(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as r:
        return await r.text()


def _sample(text: str, name: str, labels: str) -> float:
    match = re.search("^" + re.escape(name) + r"\{" + labels + r"\} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _llm(
    server: RunningServer, call_id: str, prompt: str, max_tokens: int, cancel_after: int = 0
) -> tuple[str, dict[str, Any]]:
    """Greedy completion; with ``cancel_after`` the client cancels after that many tokens."""
    text = ""
    tokens = 0
    async with aiohttp.ClientSession() as s, s.ws_connect(server.ws_url) as ws:
        await ws.send_json(
            {
                "op": "llm",
                "call_id": call_id,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
        )
        async with asyncio.timeout(TIMEOUT):
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame["type"] == "token":
                    text += frame["text"]
                    tokens += 1
                    if tokens == cancel_after:
                        await ws.send_json({"type": "cancel"})
                else:
                    return text, frame
    raise AssertionError("stream ended without done")


async def _wait_llm_slots_free(server: RunningServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            m = await _metrics(server)
            if _sample(m, "voicestack_inference_active_slots", 'engine="llm"') == 0:
                return
            await asyncio.sleep(0.05)


async def test_batched_llm_equals_one_at_a_time(deadline_server: RunningServer) -> None:
    calls = [f"{kind}-{i}" for kind in ("alone", "batched") for i in range(len(PROMPTS))]
    async with admitted_calls(deadline_server, calls):
        await _batched_equals_alone(deadline_server)


async def _batched_equals_alone(deadline_server: RunningServer) -> None:
    alone = []
    for i, prompt in enumerate(PROMPTS):
        text, done = await _llm(deadline_server, f"alone-{i}", prompt, 24)
        assert done["type"] == "done", done
        alone.append(text)
    before = await _metrics(deadline_server)
    results = await asyncio.gather(
        *(_llm(deadline_server, f"batched-{i}", p, 24) for i, p in enumerate(PROMPTS))
    )
    after = await _metrics(deadline_server)
    assert [done["type"] for _, done in results] == ["done"] * len(PROMPTS), results
    assert [text for text, _ in results] == alone
    assert all(done["usage"]["completion_tokens"] >= 1 for _, done in results)
    steps = _sample(after, "voicestack_inference_batch_size_count", 'engine="llm"') - _sample(
        before, "voicestack_inference_batch_size_count", 'engine="llm"'
    )
    single = _sample(
        after, "voicestack_inference_batch_size_bucket", 'engine="llm",le="1.0"'
    ) - _sample(before, "voicestack_inference_batch_size_bucket", 'engine="llm",le="1.0"')
    assert steps > 0 and single < steps, "the concurrent requests never shared a step"
    await _wait_llm_slots_free(deadline_server)


async def test_cancelled_sequence_never_leaks_into_another_call(
    deadline_server: RunningServer,
) -> None:
    calls = ["leak-ref-1", "leak-ref-2", "leak-victim", "leak-other", "leak-later"]
    async with admitted_calls(deadline_server, calls):
        await _cancelled_never_leaks(deadline_server)


async def _cancelled_never_leaks(deadline_server: RunningServer) -> None:
    victim_prompt, other_prompt, later_prompt = PROMPTS[3], PROMPTS[1], PROMPTS[2]
    other_alone, _ = await _llm(deadline_server, "leak-ref-1", other_prompt, 40)
    later_alone, _ = await _llm(deadline_server, "leak-ref-2", later_prompt, 40)
    (victim_text, victim_done), (other_text, other_done) = await asyncio.gather(
        _llm(deadline_server, "leak-victim", victim_prompt, 200, cancel_after=3),
        _llm(deadline_server, "leak-other", other_prompt, 40),
    )
    assert victim_done["finish_reason"] == "cancelled", victim_done
    assert victim_done["usage"]["completion_tokens"] < 200
    assert other_text == other_alone and other_done["type"] == "done"
    # A new call on the freed slot produces exactly what it produces alone.
    later_text, _ = await _llm(deadline_server, "leak-later", later_prompt, 40)
    assert later_text == later_alone
    assert victim_text.strip() and victim_text not in later_text
    await _wait_llm_slots_free(deadline_server)


def test_whisper_step_batch_equals_each_alone(models: ResolvedModels) -> None:
    tts = TtsEngine(models.tts_onnx, models.tts_config, device="cpu", threads=1)
    sentences = [
        "Please hold while I transfer you.",
        "Your order has shipped today.",
        "I would like to cancel my subscription.",
    ]
    pcms = []
    for sentence in sentences:
        audio = tts.synthesize(sentence).astype(np.float32)
        # Piper speaks at 22.05 kHz; the STT stream takes 16 kHz PCM.
        idx = np.arange(0, len(audio), tts.sample_rate / 16_000)
        y = np.interp(idx, np.arange(len(audio)), audio)
        pcms.append(np.clip(y, -32768, 32767).astype("<i2").tobytes())

    result: list[Any] = []

    def run() -> None:  # BatchedWhisper belongs to the thread that first uses it
        step = WhisperStep(BatchedWhisper(models.stt_dir, intra_threads=1))
        loop = asyncio.new_event_loop()

        def items(batch: list[bytes], tag: str) -> list[StepItem[Any, Any]]:
            out: list[StepItem[Any, Any]] = []
            for i, pcm in enumerate(batch):
                work: Work[SttJob, str] = Work(SttJob(pcm), f"s{i}", True, 0, loop)
                req = Request(f"{tag}{i}", f"c{i}", Stage.STT_FINAL, 0.0, 1.0)
                out.append(StepItem(req, work))
            return out

        alone = []
        for i, pcm in enumerate(pcms):
            (item,) = items([pcm], f"alone{i}-")
            (out,) = step.step([item])
            assert out.done
            alone.append(step.result(item.rid))
            step.release(item.rid)
        batch = items(pcms, "batch-")
        outs = step.step(batch)
        assert [o.request_id for o in outs] == [it.rid for it in batch]
        result.append((alone, [step.result(it.rid) for it in batch]))
        loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT)
    assert result, "whisper step thread failed"
    alone, batched = result[0]
    assert batched == alone
    assert all(text.strip() for text in alone), alone
