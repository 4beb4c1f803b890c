"""Transcribe what the caller heard (and said) with our own STT: the inference server's STT
stream through the same plugin the agent uses."""

from __future__ import annotations

import asyncio
import logging

from livekit import rtc
from livekit.agents import APIConnectOptions

from worker.agent.plugins import InferenceSTT, ServerError
from worker.caller.analysis import CallAnalysis, Segment, speech_segments
from worker.caller.audio import Pcm, resample

__all__ = ["transcribe_analysis", "transcribe_pcm", "transcribe_speech"]

STT_RATE = 16000
# The analysis runs after the call and is not latency-critical: when the inference server's
# admission control refuses it (busy machine), wait and ask again rather than fail the demo.
BUSY_RETRY_S = 60.0

logger = logging.getLogger("voicestack.caller")


async def transcribe_pcm(stt: InferenceSTT, samples: Pcm, rate: int) -> str:
    """Final transcript of ``samples`` (any rate; resampled to 16 kHz)."""
    pcm = resample(samples, rate, STT_RATE)
    if len(pcm) == 0:
        return ""
    frame = rtc.AudioFrame(pcm.tobytes(), STT_RATE, 1, len(pcm))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_RETRY_S
    delay = 0.5
    while True:
        try:
            event = await stt.recognize(
                frame, conn_options=APIConnectOptions(max_retry=1, timeout=30)
            )
        except ServerError as err:
            if err.code not in ("overloaded", "not_ready") or loop.time() + delay > deadline:
                raise
            logger.warning("transcription refused (%s); retrying in %.1fs", err.code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        return event.alternatives[0].text if event.alternatives else ""


def _cut(samples: Pcm, rate: int, seg: Segment, pad_s: float = 0.2) -> Pcm:
    start = max(0, int((seg.start_s - pad_s) * rate))
    end = min(len(samples), int((seg.end_s + pad_s) * rate))
    return samples[start:end]


async def transcribe_analysis(
    analysis: CallAnalysis, recording: Pcm, rate: int, *, inference_url: str
) -> None:
    """Fill ``greeting_text`` and each turn's ``agent_text`` from the recording."""
    stt = InferenceSTT(url=inference_url, interim_results=False, call_id="caller-analysis")
    try:
        if analysis.greeting is not None:
            analysis.greeting_text = await transcribe_pcm(
                stt, _cut(recording, rate, analysis.greeting), rate
            )
        for turn in analysis.turns:
            if turn.answer is not None:
                turn.agent_text = await transcribe_pcm(
                    stt, _cut(recording, rate, turn.answer), rate
                )
    finally:
        await stt.aclose()


async def transcribe_speech(samples: Pcm, rate: int, *, inference_url: str) -> str:
    """Everything said in ``samples``, speech segment by segment (long silences and several
    sentences stay within one STT window each), joined with spaces."""
    stt = InferenceSTT(url=inference_url, interim_results=False, call_id="caller-analysis")
    try:
        texts = [
            await transcribe_pcm(stt, _cut(samples, rate, seg), rate)
            for seg in speech_segments(samples, rate)
        ]
    finally:
        await stt.aclose()
    return " ".join(t.strip() for t in texts if t.strip())
