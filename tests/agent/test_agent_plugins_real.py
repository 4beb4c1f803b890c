"""The plugins against the real inference server with the bundled models (integration).

Same contracts as test_agent_plugins.py (which uses the protocol fake), now with real engines:
speech in, words out; text in, tokens out; text in, 22.05 kHz audio out; a cancelled stream
frees its slot on the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.llm import ChatContext

from worker.agent.plugins import InferenceLLM, InferenceSTT, InferenceTTS
from worker.caller.utterances import speak_espeak
from worker.stack.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPTS = APIConnectOptions(max_retry=0, timeout=30.0)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("inference") / "inference.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "inference-server", "--config",
             str(ROOT / "config" / "inference.yaml"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _get(url + "/readyz")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"inference server did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _active(url: str) -> dict[str, int]:
    status, body = _get(url + "/v1/capacity")
    assert status == 200
    streams: dict[str, int] = json.loads(body)["active_streams"]
    return streams


def _speech_frames(text: str, rate: int = 48000, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    pcm = speak_espeak(text, rate)
    pcm = np.concatenate([pcm, np.zeros(rate // 2, dtype=np.int16)])
    n = rate * frame_ms // 1000
    return [
        rtc.AudioFrame(pcm[i : i + n].tobytes(), rate, 1, n) for i in range(0, len(pcm) - n + 1, n)
    ]


async def test_real_stt_stream_transcribes_speech(server_url: str) -> None:
    plugin = InferenceSTT(url=server_url)
    stream = plugin.stream(conn_options=OPTS)
    for frame in _speech_frames("What are your opening hours?"):
        stream.push_frame(frame)
        await asyncio.sleep(0.005)  # roughly paced, so the server can send interims
    stream.flush()
    stream.end_input()
    events = [ev async for ev in stream]
    await plugin.aclose()
    finals = [e for e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    # end_input() flushes again (livekit's RecognizeStream does); that second segment is empty.
    assert [bool(f.alternatives[0].text) for f in finals] == [True, False]
    text = finals[0].alternatives[0].text.lower()
    assert "opening" in text and "hours" in text, text
    kinds = [e.type for e in events]
    last_interim = max(
        (i for i, k in enumerate(kinds) if k == stt.SpeechEventType.INTERIM_TRANSCRIPT), default=-1
    )
    assert last_interim < kinds.index(stt.SpeechEventType.FINAL_TRANSCRIPT)


async def test_real_llm_streams_an_answer(server_url: str) -> None:
    plugin = InferenceLLM(url=server_url, max_tokens=24, temperature=0.0)
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="You are a helpful phone assistant. Answer briefly.")
    ctx.add_message(role="user", content="What is the capital of France?")
    chunks = [c async for c in plugin.chat(chat_ctx=ctx, conn_options=OPTS)]
    await plugin.aclose()
    text = "".join(c.delta.content or "" for c in chunks if c.delta)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 24 and usage.prompt_tokens > 10


async def test_real_tts_stream_gives_piper_audio(server_url: str) -> None:
    plugin = InferenceTTS(url=server_url)
    stream = plugin.stream(conn_options=OPTS)
    for token in ["Hello", ", thank you", " for calling.", " How can I help?"]:
        stream.push_text(token)
    stream.end_input()
    frames = [ev.frame async for ev in stream]
    await plugin.aclose()
    assert frames and all(f.sample_rate == 22050 for f in frames)
    total = sum(f.duration for f in frames)
    assert 1.0 < total < 8.0
    pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    assert np.abs(pcm.astype(np.int32)).max() > 1000  # speech, not silence


async def test_real_llm_cancel_frees_the_slot(server_url: str) -> None:
    plugin = InferenceLLM(url=server_url, max_tokens=400, temperature=0.8)
    ctx = ChatContext.empty()
    ctx.add_message(role="user", content="Tell me a very long story about a lighthouse keeper.")
    stream = plugin.chat(chat_ctx=ctx, conn_options=OPTS)
    async for chunk in stream:
        if chunk.delta and chunk.delta.content:
            break
    assert _active(server_url)["llm"] == 1
    await stream.aclose()
    for _ in range(100):  # the server frees the slot before its next engine step
        if _active(server_url)["llm"] == 0:
            break
        await asyncio.sleep(0.1)
    await plugin.aclose()
    assert _active(server_url)["llm"] == 0
