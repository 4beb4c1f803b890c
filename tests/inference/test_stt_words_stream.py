"""Word timings through the real inference server (bundled models): the ``words`` start option
on the wire, and the post-call client :func:`transcribe_words` against it."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import numpy as np
import pytest

from worker.agent.plugins.stt_words import TranscriptionError, transcribe_words
from worker.inference.background import RunningServer
from worker.inference.engines.whisper_eval import synthesize_16k
from worker.inference.words import words_from_wire
from worker.models import bundled_model_files

pytestmark = pytest.mark.integration

TIMEOUT = 60  # two shared cores: generous, but a hang fails
SENTENCE = "My card number is four one one one, two two two two."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthesize_16k([SENTENCE], bundled_model_files().tts_onnx)[0]


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


async def _stt_frames(server: RunningServer, start: dict[str, Any], pcm: bytes) -> list[Any]:
    async with aiohttp.ClientSession() as s, asyncio.timeout(TIMEOUT):
        ws = await s.ws_connect(server.ws_url)
        await ws.send_json({"op": "stt", "call_id": "words-wire", **start})
        for i in range(0, len(pcm), 6400):
            await ws.send_bytes(pcm[i : i + 6400])
            await asyncio.sleep(0.05)  # paced, so interims happen
        await ws.send_json({"type": "flush"})
        await ws.send_json({"type": "end_input"})
        return [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]


async def test_finals_carry_words_only_when_asked(
    inference_server: RunningServer, speech: np.ndarray
) -> None:
    pcm = (speech * 32767).astype("<i2").tobytes()
    frames = await _stt_frames(inference_server, {"words": True}, pcm)
    finals = [f for f in frames if f["type"] == "final"]
    interims = [f for f in frames if f["type"] == "interim"]
    assert len(finals) == 1 and frames[-1] == {"type": "done"}, frames
    assert interims and all("words" not in f for f in interims)
    words = words_from_wire(finals[0]["words"])
    assert _letters("".join(w.text for w in words)) == _letters(finals[0]["text"])
    assert all(w.end_s <= finals[0]["audio_ms"] / 1000 for w in words)

    plain = await _stt_frames(inference_server, {"interim": False}, pcm)
    assert [f["type"] for f in plain] == ["final", "done"]
    assert set(plain[0]) == {"type", "text", "audio_ms", "segment"}  # unchanged without words
    assert plain[0]["text"] == finals[0]["text"]


async def test_transcribe_words_times_a_clip(
    inference_server: RunningServer, speech: np.ndarray
) -> None:
    # 1.5 s of silence first, and 48 kHz int16 input: times must come back in the clip's own
    # seconds, through the client's resampling.
    clip16 = np.concatenate([np.zeros(24_000, np.float32), speech])
    clip48 = np.interp(np.arange(clip16.size * 3) / 48_000, np.arange(clip16.size) / 16_000, clip16)
    pcm48 = np.round(clip48 * 32767).astype(np.int16)
    text, words = await transcribe_words(
        inference_server.url, pcm48, 48_000, call_id="post-call-words", timeout_s=TIMEOUT
    )
    assert _letters(text).startswith("mycardnumber"), text
    assert _letters("".join(w.text for w in words)) == _letters(text)
    assert words[0].start_s >= 1.0, words
    assert words[-1].end_s <= clip16.size / 16_000 + 0.01
    digits = [w for w in words if re.search(r"\d", w.text)]
    assert digits and digits[0].start_s > words[0].end_s  # the number comes after "My"
    # The stream was closed: its slot and the call are free again.
    for _ in range(100):  # the server's loop runs in its own thread: poll, for up to 5 s
        if not inference_server.server.engines.has_call("post-call-words"):
            break
        await asyncio.sleep(0.05)
    assert not inference_server.server.engines.has_call("post-call-words")


async def test_transcribe_words_server_down() -> None:
    with pytest.raises(TranscriptionError) as info:
        await transcribe_words(
            "http://127.0.0.1:9", np.zeros(1600, np.int16), 16_000, call_id="c", timeout_s=5
        )
    assert info.value.code == "connection"
