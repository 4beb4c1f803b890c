"""The real server in deadline mode under load: 8 concurrent mixed streams all complete,
cancellations mid-stream leave no busy slot behind (checked through /metrics and /v1/capacity),
and a call beyond the admission limit is refused at once with ``overloaded``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from admitted_calls import admits_when_idle, admitted_calls

from worker.config.inference import (
    InferenceConfig,
    LimitsConfig,
    LlmEngineConfig,
    ResolvedModels,
)
from worker.inference.background import RunningServer, serve_in_thread
from worker.inference.engines.tts import TtsEngine

pytestmark = pytest.mark.integration

TIMEOUT = 120
ENGINES = ("stt", "llm", "tts")


def _config() -> InferenceConfig:
    return InferenceConfig(
        port=0,
        llm=LlmEngineConfig(n_ctx=1024, max_tokens=256),
        limits=LimitsConfig(max_streams_stt=8, max_streams_llm=8, max_streams_tts=8),
        # This test is about completion and freed slots, not about refusing calls on the
        # engines' measured load (2 shared cores): low priors, a short load window.
        scheduler=admits_when_idle({"max_batch": 8, "max_active": 8}, max_calls=10, max_load=1.0),
    )


@pytest.fixture(scope="module")
def server(models: ResolvedModels) -> Iterator[RunningServer]:
    with serve_in_thread(_config(), models) as running:
        yield running


@pytest.fixture
def fresh_server(models: ResolvedModels) -> Iterator[RunningServer]:
    """A server of its own: no other test's calls taught its admission what a call costs."""
    with serve_in_thread(_config(), models) as running:
        yield running


@pytest.fixture(scope="module")
def speech(models: ResolvedModels) -> bytes:
    tts = TtsEngine(models.tts_onnx, models.tts_config, device="cpu", threads=1)
    audio = tts.synthesize("I would like to check the status of my order.").astype(np.float32)
    idx = np.arange(0, len(audio), tts.sample_rate / 16_000)
    y = np.interp(idx, np.arange(len(audio)), audio)
    return np.clip(y, -32768, 32767).astype("<i2").tobytes()


async def _frames(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        async for msg in ws:
            out.append(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg.data)
    return out


async def _stt(server: RunningServer, call: str, pcm: bytes, *, hang_up: bool = False) -> Any:
    async with aiohttp.ClientSession() as s, s.ws_connect(server.ws_url) as ws:
        await ws.send_json({"op": "stt", "call_id": call})
        for i in range(0, len(pcm), 8000):
            await ws.send_bytes(pcm[i : i + 8000])
        await ws.send_json({"type": "flush"})
        if hang_up:
            return None  # the caller is gone before the final
        await ws.send_json({"type": "end_input"})
        return await _frames(ws)


async def _llm(
    server: RunningServer, call: str, *, cancel_after: int = 0, vanish: bool = False
) -> Any:
    async with aiohttp.ClientSession() as s, s.ws_connect(server.ws_url) as ws:
        await ws.send_json(
            {
                "op": "llm",
                "call_id": call,
                "messages": [{"role": "user", "content": "Tell me a story about a ship."}],
                "max_tokens": 200 if cancel_after else 16,
                "temperature": 0.0,
            }
        )
        frames: list[Any] = []
        async with asyncio.timeout(TIMEOUT):
            async for msg in ws:
                frames.append(json.loads(msg.data))
                if cancel_after and len(frames) == cancel_after:
                    if vanish:
                        return frames  # vanish without a word
                    await ws.send_json({"type": "cancel"})
        return frames


async def _tts(server: RunningServer, call: str, *, hang_up_after_audio: bool = False) -> Any:
    async with aiohttp.ClientSession() as s, s.ws_connect(server.ws_url) as ws:
        await ws.send_json({"op": "tts", "call_id": call})
        text = "Thanks for calling. Your order is on its way. It should arrive tomorrow."
        await ws.send_json({"type": "push_text", "text": text * (4 if hang_up_after_audio else 1)})
        await ws.send_json({"type": "end_input"})
        if hang_up_after_audio:
            async with asyncio.timeout(TIMEOUT):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        return None  # first audio arrived: hang up mid-answer
        return await _frames(ws)


async def _metrics(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as r:
        return await r.text()


def _gauge(text: str, name: str, engine: str) -> float:
    match = re.search(
        "^" + re.escape(name) + r'\{engine="' + engine + r'"\} (\S+)$', text, re.MULTILINE
    )
    assert match, f"{name}{{engine={engine}}} missing from /metrics"
    return float(match.group(1))


async def _wait_all_free(server: RunningServer, *, held: int = 0) -> dict[str, Any]:
    """Until /metrics shows no busy slot and no queue, and /v1/capacity no call but the ``held``
    ones (their holders' streams idle); returns /v1/capacity."""
    async with asyncio.timeout(TIMEOUT), aiohttp.ClientSession() as s:
        while True:
            text = await _metrics(server)
            busy = [
                _gauge(text, metric, e)
                for e in ENGINES
                for metric in (
                    "voicestack_inference_active_slots",
                    "voicestack_inference_queue_depth",
                )
            ]
            async with s.get(server.url + "/v1/capacity") as r:
                cap: dict[str, Any] = await r.json()
            if (
                not any(busy)
                and cap["active_calls"] == held
                and sum(cap["active_streams"].values()) == held
            ):
                return cap
            await asyncio.sleep(0.1)


async def test_eight_concurrent_mixed_streams_complete_and_cancellations_free_slots(
    server: RunningServer, speech: bytes
) -> None:
    # Eight calls, admitted as a call's first stream does, live through both rounds: the
    # cancellations run in calls that are already admitted, as they would in a real call.
    async with admitted_calls(server, CALLS):
        results = await _mixed(server, speech)
        _check_mixed(results)
        text = await _metrics(server)
        assert 'voicestack_inference_calls_total{decision="admitted"} 8.0' in text
        await _wait_all_free(server, held=len(CALLS))

        # Now cancel several mid-stream: cancel frames, vanished clients, hang-ups mid-audio.
        outcomes = await _cuts(server, speech)
    for frames in (outcomes[0], outcomes[2]):
        assert frames[-1]["type"] == "done", frames[-1]
        assert frames[-1]["finish_reason"] == "cancelled", frames[-1]
    assert outcomes[7][-1].get("usage", {}).get("completion_tokens") == 16, outcomes[7][-1]
    cap = await _wait_all_free(server)
    assert cap["load"] == 0.0 and cap["accepting"] is True
    assert cap["engines"]["llm"]["active_slots"] == 0
    text = await _metrics(server)
    assert _gauge(text, "voicestack_inference_active_slots", "llm") == 0


CALLS = [f"call-{i}" for i in range(1, 9)]


async def _mixed(server: RunningServer, speech: bytes) -> list[Any]:
    return await asyncio.gather(
        _stt(server, "call-1", speech),
        _stt(server, "call-2", speech),
        _stt(server, "call-3", speech),
        _llm(server, "call-4"),
        _llm(server, "call-5"),
        _llm(server, "call-6"),
        _tts(server, "call-7"),
        _tts(server, "call-8"),
    )


def _check_mixed(results: list[Any]) -> None:
    for frames in results[:3]:
        finals = [f for f in frames if isinstance(f, dict) and f["type"] == "final"]
        assert frames[-1] == {"type": "done"} and len(finals) == 1, frames
        assert "order" in finals[0]["text"].lower(), finals
    for frames in results[3:6]:
        assert frames[-1]["type"] == "done", frames[-1]
        assert frames[-1]["usage"]["completion_tokens"] == 16
    for frames in results[6:]:
        assert frames[-1] == {"type": "done"}
        assert sum(len(f) for f in frames if isinstance(f, bytes)) > 0


async def _cuts(server: RunningServer, speech: bytes) -> list[Any]:
    return await asyncio.gather(
        _llm(server, "call-1", cancel_after=3),
        _llm(server, "call-2", cancel_after=2, vanish=True),
        _llm(server, "call-3", cancel_after=5),
        _llm(server, "call-4", cancel_after=4, vanish=True),
        _tts(server, "call-5", hang_up_after_audio=True),
        _tts(server, "call-6", hang_up_after_audio=True),
        _stt(server, "call-7", speech, hang_up=True),
        _llm(server, "call-8"),  # one survivor among them
    )


async def test_call_beyond_admission_limit_is_refused_at_once(
    fresh_server: RunningServer,
) -> None:
    server = fresh_server
    limit = server.server.config.scheduler.admission.max_calls
    async with aiohttp.ClientSession() as s:
        held = []
        for i in range(limit):
            ws = await s.ws_connect(server.ws_url)
            # Idle streams hold their call; alternate ops to stay within per-op stream limits.
            await ws.send_json({"op": ("tts", "stt")[i % 2], "call_id": f"hold-{i}"})
            held.append(ws)
        async with asyncio.timeout(TIMEOUT):
            while True:
                if server.server.engines.admission.active_calls >= limit:
                    break
                await asyncio.sleep(0.02)

        extra = await s.ws_connect(server.ws_url)
        await extra.send_json({"op": "tts", "call_id": "one-too-many"})
        frames = await _frames(extra)
        assert frames[0]["type"] == "error" and frames[0]["code"] == "overloaded", frames
        assert "max_calls" in frames[0]["message"]
        # Another stream of an admitted call is not a new call: it is served.
        again = await s.ws_connect(server.ws_url)
        await again.send_json({"op": "llm", "call_id": "hold-0", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
        frames = await _frames(again)
        assert frames[-1]["type"] == "done", frames
        for ws in held:
            await ws.close()
    cap = await _wait_all_free(server)
    assert cap["active_calls"] == 0
    assert 'voicestack_inference_calls_total{decision="refused"} 1.0' in await _metrics(server)


async def test_one_call_id_cannot_pile_up_streams(fresh_server: RunningServer) -> None:
    """Admission counts calls: a client reusing an admitted call id gets at most
    ``limits.max_streams_per_call`` streams, not a way around ``max_calls``."""
    server = fresh_server
    per_call = server.server.config.limits.max_streams_per_call
    async with aiohttp.ClientSession() as s:
        held = []
        for i in range(per_call):
            ws = await s.ws_connect(server.ws_url)
            await ws.send_json({"op": ("tts", "stt")[i % 2], "call_id": "greedy"})
            held.append(ws)
        async with asyncio.timeout(TIMEOUT):
            while True:
                if server.server.engines._streams_per_call.get("greedy", 0) >= per_call:
                    break
                await asyncio.sleep(0.02)
        extra = await s.ws_connect(server.ws_url)
        await extra.send_json({"op": "tts", "call_id": "greedy"})
        frames = await _frames(extra)
        assert frames[0]["type"] == "error" and frames[0]["code"] == "overloaded", frames
        assert "open streams" in frames[0]["message"]
        await held.pop().close()  # one freed: the call may open one again
        async with asyncio.timeout(TIMEOUT):
            while True:
                if server.server.engines._streams_per_call.get("greedy", 0) < per_call:
                    break
                await asyncio.sleep(0.02)
        again = await s.ws_connect(server.ws_url)
        await again.send_json({"op": "llm", "call_id": "greedy", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
        frames = await _frames(again)
        assert frames[-1]["type"] == "done", frames
        for ws in held:
            await ws.close()
    await _wait_all_free(server)
