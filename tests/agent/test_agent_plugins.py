"""Contract tests of the STT/LLM/TTS plugins against a fake inference server that speaks the
real protocol over real WebSockets (see fake_inference.py). The same plugins are exercised
against the real inference server in test_agent_plugins_real.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fake_inference import FakeScript, fake_inference
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, stt
from livekit.agents.llm import ChatContext, function_tool

from worker.agent.backchannel import OverlapFilter
from worker.agent.plugins import (
    InferenceLLM,
    InferenceSTT,
    InferenceTTS,
    ServerError,
    ToolCallParser,
)

NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


def _frames(seconds: float, rate: int = 48000, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    n = int(rate * frame_ms / 1000)
    t = np.arange(int(rate * seconds)) / rate
    pcm = (3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return [
        rtc.AudioFrame(pcm[i : i + n].tobytes(), rate, 1, len(pcm[i : i + n]))
        for i in range(0, len(pcm) - n + 1, n)
    ]


async def test_stt_stream_interims_then_final_per_flush() -> None:
    async with fake_inference(FakeScript(stt_finals=["first words", "second words"])) as srv:
        plugin = InferenceSTT(url=srv.url)
        stream = plugin.stream(conn_options=NO_RETRY)
        # 48 kHz input: the stream resamples to the protocol's 16 kHz.
        for f in _frames(0.5):
            stream.push_frame(f)
        stream.flush()
        for f in _frames(0.3):
            stream.push_frame(f)
        stream.end_input()
        events = [ev async for ev in stream]
        await plugin.aclose()

    kinds = [ev.type for ev in events]
    finals = [ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [f.alternatives[0].text for f in finals] == ["first words", "second words"]
    first_final = kinds.index(stt.SpeechEventType.FINAL_TRANSCRIPT)
    assert stt.SpeechEventType.INTERIM_TRANSCRIPT in kinds[:first_final]
    usage = [ev for ev in events if ev.type == stt.SpeechEventType.RECOGNITION_USAGE]
    assert len(usage) == 2
    assert usage[0].recognition_usage is not None
    assert usage[0].recognition_usage.audio_duration == pytest.approx(0.5, abs=0.05)
    rec = srv.streams[0]
    assert rec.start["sample_rate"] == 16000 and rec.start["op"] == "stt"
    # 0.8 s at 16 kHz s16 mono, whatever the input rate was.
    assert rec.audio_bytes == pytest.approx(0.8 * 16000 * 2, rel=0.05)
    assert [c["type"] for c in rec.received] == ["flush", "flush", "end_input"]
    assert rec.ended == "done"


async def test_stt_final_filter_decides_what_the_session_hears() -> None:
    """A backchannel over the agent reaches the session as an empty final (no new turn)."""
    overlap = OverlapFilter(["mm-hmm"])
    overlap.user_started_speaking(agent_speaking=True)
    async with fake_inference(FakeScript(stt_finals=["Mm-hmm.", "Stop."])) as srv:
        plugin = InferenceSTT(url=srv.url, final_filter=overlap.final_text)
        stream = plugin.stream(conn_options=NO_RETRY)
        for f in _frames(0.3):
            stream.push_frame(f)
        stream.flush()
        for f in _frames(0.3):
            stream.push_frame(f)
        stream.end_input()
        events = [ev async for ev in stream]
        await plugin.aclose()
    finals = [ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [f.alternatives[0].text for f in finals] == ["", "Stop."]


async def test_stt_declares_manual_flush_so_vad_finalizes() -> None:
    plugin = InferenceSTT(url="http://127.0.0.1:9")
    assert plugin.capabilities.manual_flush and plugin.capabilities.streaming


async def test_stt_recognize_whole_buffer() -> None:
    async with fake_inference(FakeScript(stt_finals=["whole buffer"])) as srv:
        plugin = InferenceSTT(url=srv.url)
        ev = await plugin.recognize(_frames(1.5), conn_options=NO_RETRY)
        await plugin.aclose()
    assert ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert ev.alternatives[0].text == "whole buffer"
    assert srv.streams[0].start["interim"] is False


async def test_stt_overloaded_is_a_clear_final_error() -> None:
    async with fake_inference(FakeScript(error_code="overloaded")) as srv:
        plugin = InferenceSTT(url=srv.url)
        stream = plugin.stream(conn_options=APIConnectOptions(max_retry=2, retry_interval=0.0))
        stream.push_frame(_frames(0.1)[0])
        stream.end_input()
        with pytest.raises(ServerError) as err:
            async for _ in stream:
                pass
        await plugin.aclose()
    assert err.value.code == "overloaded" and not err.value.retryable
    assert len(srv.streams) == 1  # not retried against a full server


async def test_dead_server_raises_connection_error() -> None:
    plugin = InferenceLLM(url="http://127.0.0.1:9", connect_timeout=1.0)
    ctx = ChatContext.empty()
    ctx.add_message(role="user", content="hi")
    with pytest.raises(APIConnectionError):
        await plugin.chat(chat_ctx=ctx, conn_options=NO_RETRY).collect()
    await plugin.aclose()


async def test_llm_streams_tokens_and_usage() -> None:
    async with fake_inference() as srv:
        plugin = InferenceLLM(url=srv.url, max_tokens=40, temperature=0.2)
        ctx = ChatContext.empty()
        ctx.add_message(role="system", content="Be brief.")
        ctx.add_message(role="user", content="Hello?")
        chunks = [c async for c in plugin.chat(chat_ctx=ctx, conn_options=NO_RETRY)]
        await plugin.aclose()
    text = "".join(c.delta.content or "" for c in chunks if c.delta)
    assert text == "Hi, how can I help?"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    start = srv.streams[0].start
    assert start["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
    ]
    assert start["max_tokens"] == 40 and start["temperature"] == 0.2


@function_tool
async def lookup_order(order_id: str) -> str:
    """Look up an order's status by its id."""
    return "shipped"


async def test_llm_tool_call_arrives_whole_in_one_chunk() -> None:
    call = '<tool_call>{"name": "lookup_order", "arguments": {"order_id": "A17"}}</tool_call>'
    # The call is split into single characters: the worst case for a streaming parser.
    tokens = ["Let me check. ", *call, " One moment."]
    async with fake_inference(FakeScript(llm_tokens=tokens)) as srv:
        plugin = InferenceLLM(url=srv.url)
        ctx = ChatContext.empty()
        ctx.add_message(role="user", content="Where is order A17?")
        chunks = [
            c async for c in plugin.chat(chat_ctx=ctx, tools=[lookup_order], conn_options=NO_RETRY)
        ]
        await plugin.aclose()
    with_calls = [c for c in chunks if c.delta and c.delta.tool_calls]
    assert len(with_calls) == 1 and len(with_calls[0].delta.tool_calls) == 1  # type: ignore[union-attr]
    tool_call = with_calls[0].delta.tool_calls[0]  # type: ignore[union-attr]
    assert tool_call.name == "lookup_order"
    assert json.loads(tool_call.arguments) == {"order_id": "A17"}
    text = "".join(c.delta.content or "" for c in chunks if c.delta)
    assert text == "Let me check.  One moment."
    system = srv.streams[0].start["messages"][0]
    assert system["role"] == "system" and "lookup_order" in system["content"]


def test_tool_call_parser_holds_back_partial_tags() -> None:
    parser = ToolCallParser()
    released = ""
    for ch in "a <tool_ca":
        released += parser.feed(ch).text
    assert released == "a "  # "<tool_ca" might still become a tool call
    piece = parser.feed("t is not a tag")
    assert released + piece.text == "a <tool_cat is not a tag"
    tail = parser.finish()
    assert tail.text == "" and tail.calls == []


def test_tool_call_parser_drops_malformed_call_and_keeps_text() -> None:
    parser = ToolCallParser()
    piece = parser.feed("ok <tool_call>{not json</tool_call> done")
    assert piece.text == "ok  done" and piece.calls == []


async def test_llm_cancel_reaches_the_server() -> None:
    script = FakeScript(llm_tokens=["word "] * 200, llm_token_delay_s=0.02)
    async with fake_inference(script) as srv:
        plugin = InferenceLLM(url=srv.url)
        ctx = ChatContext.empty()
        ctx.add_message(role="user", content="Tell me a long story.")
        stream = plugin.chat(chat_ctx=ctx, conn_options=NO_RETRY)
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                break
        assert srv.active["llm"] == 1
        await stream.aclose()
        for _ in range(100):
            if srv.active["llm"] == 0:
                break
            await asyncio.sleep(0.02)
        await plugin.aclose()
    assert srv.active["llm"] == 0
    assert srv.streams[0].ended == "client_closed"


async def test_llm_reply_ends_after_max_sentences_and_cancels_the_rest() -> None:
    tokens = ["We", " open", " at", " 9.", " We", " close", " at", " 5.30", " pm.", " Also"]
    script = FakeScript(llm_tokens=tokens + [" more"] * 200, llm_token_delay_s=0.01)
    async with fake_inference(script) as srv:
        plugin = InferenceLLM(url=srv.url, max_sentences=2)
        ctx = ChatContext.empty()
        ctx.add_message(role="user", content="When are you open?")
        stream = plugin.chat(chat_ctx=ctx, conn_options=NO_RETRY)
        text = "".join([c.delta.content async for c in stream if c.delta and c.delta.content])
        for _ in range(100):
            if srv.active["llm"] == 0:
                break
            await asyncio.sleep(0.02)
        await plugin.aclose()
    assert text == "We open at 9. We close at 5.30 pm."
    assert srv.active["llm"] == 0
    assert srv.streams[0].ended == "client_closed"  # the rest was cancelled, not generated


async def test_tts_stream_audio_follows_initialized_emitter() -> None:
    async with fake_inference(FakeScript(tts_ms_per_char=10.0)) as srv:
        plugin = InferenceTTS(url=srv.url, speed=1.1)
        stream = plugin.stream(conn_options=NO_RETRY)
        for word in ["Hello ", "there, ", "how are ", "you today?"]:
            stream.push_text(word)
        stream.end_input()
        frames = [ev async for ev in stream]
        await plugin.aclose()
    assert frames, "no audio"
    assert all(f.frame.sample_rate == 22050 and f.frame.num_channels == 1 for f in frames)
    total = sum(f.frame.duration for f in frames)
    chars = len("Hello there,") + len("how are you today?")
    assert total == pytest.approx(chars * 0.010, abs=0.03)
    rec = srv.streams[0]
    assert rec.start == {"op": "tts", "call_id": plugin._call_id, "speed": 1.1}
    assert [c["type"] for c in rec.received][-1] == "end_input"
    assert rec.ended == "done"


async def test_tts_synthesize_one_shot() -> None:
    async with fake_inference() as srv:
        plugin = InferenceTTS(url=srv.url)
        frame = await plugin.synthesize("Good morning.", conn_options=NO_RETRY).collect()
        await plugin.aclose()
    assert frame.duration == pytest.approx(len("Good morning.") * 0.020, abs=0.03)


async def test_tts_wrong_sample_rate_fails_clearly() -> None:
    async with fake_inference(FakeScript(tts_sample_rate=16000)) as srv:
        plugin = InferenceTTS(url=srv.url)
        stream = plugin.stream(conn_options=NO_RETRY)
        stream.push_text("Hello.")
        stream.end_input()
        with pytest.raises(APIError, match="16000 Hz"):
            async for _ in stream:
                pass
        await plugin.aclose()


def test_bad_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="http://"):
        InferenceTTS(url="127.0.0.1:8000")
