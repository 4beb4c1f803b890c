"""The real inference server (real models, a real port on 127.0.0.1) as clients see it:
the three stream kinds, their errors, cancellation, disconnects and concurrency."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import numpy as np
import pytest

from worker.inference.audio import resample
from worker.inference.background import RunningServer
from worker.inference.wer import word_error_rate

pytestmark = pytest.mark.integration

TIMEOUT = 60  # generous: two shared cores; a hang fails instead of blocking the suite
STORY = [{"role": "user", "content": "Tell me a long story about a dragon in a castle."}]


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def _metric(server: RunningServer, name: str, labels: str = "") -> float:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as r:
        text = await r.text()
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _frames(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """Every frame until the server closes: dicts for JSON, bytes for audio."""
    out: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                out.append(msg.data)
    return out


async def _start(
    session: aiohttp.ClientSession, server: RunningServer, start: dict[str, Any]
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(server.ws_url)
    await ws.send_json(start)
    return ws


async def _llm(server: RunningServer, **params: Any) -> list[Any]:
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, server, {"op": "llm", "call_id": "t", "messages": STORY, **params})
        return await _frames(ws)


async def _tts(server: RunningServer, texts: list[str]) -> tuple[list[Any], bytes]:
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, server, {"op": "tts", "call_id": "t"})
        for text in texts:
            await ws.send_json({"type": "push_text", "text": text})
        await ws.send_json({"type": "end_input"})
        frames = await _frames(ws)
    audio = b"".join(f for f in frames if isinstance(f, bytes))
    return [f for f in frames if isinstance(f, dict)], audio


def _speech_16k(audio_22k: bytes) -> bytes:
    pcm = np.frombuffer(audio_22k, dtype="<i2")
    y = resample(pcm.astype(np.float32), 22050, 16000)
    return np.clip(y, -32768, 32767).astype("<i2").tobytes()


async def _assert_still_serving(server: RunningServer) -> None:
    frames = await _llm(server, max_tokens=3, temperature=0.0)
    assert frames[-1]["type"] == "done", frames
    assert frames[-1]["usage"]["completion_tokens"] >= 1


async def _error(server: RunningServer, first: str | bytes, *rest: str | bytes) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(server.ws_url)
        for frame in (first, *rest):
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        frames = await _frames(ws)
    errors = [f for f in frames if isinstance(f, dict) and f.get("type") == "error"]
    assert len(errors) == 1, frames
    return errors[0]


# -- endpoints ----------------------------------------------------------------------------------
async def test_health_ready_capacity_and_metrics(inference_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(inference_server.url + "/healthz") as r:
            assert r.status == 200 and await r.text() == "ok"
        async with s.get(inference_server.url + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with s.get(inference_server.url + "/metrics") as r:
            assert r.status == 200
            assert "voicestack_inference_stage_latency_seconds" in await r.text()
    cap = await _get_json(inference_server.url + "/v1/capacity")
    assert set(cap["active_streams"]) == {"stt", "llm", "tts"}
    assert cap["accepting"] is True and 0.0 <= cap["load"] <= 1.0


# -- the three streams --------------------------------------------------------------------------
async def test_llm_stream_tokens_then_done(inference_server: RunningServer) -> None:
    frames = await _llm(inference_server, max_tokens=10, temperature=0.0)
    tokens = [f["text"] for f in frames[:-1]]
    assert all(f["type"] == "token" for f in frames[:-1])
    assert "".join(tokens).strip()
    assert frames[-1] == {
        "type": "done",
        "finish_reason": "length",
        "usage": {"prompt_tokens": frames[-1]["usage"]["prompt_tokens"], "completion_tokens": 10},
    }


async def test_tts_stream_speaks_clause_by_clause(inference_server: RunningServer) -> None:
    events, audio = await _tts(
        inference_server, ["Thanks for calling the support line, how can I", " help you today?"]
    )
    kinds = [e["type"] for e in events]
    assert kinds == ["audio_start", "audio_end", "audio_start", "audio_end", "done"]
    assert events[0]["text"] == "Thanks for calling the support line,"
    assert events[2]["text"] == "how can I help you today?"
    assert [events[0]["segment"], events[2]["segment"]] == [0, 1]
    assert events[0]["sample_rate"] == 22050
    assert len(audio) > 22050 * 2  # more than a second of speech


async def test_tts_first_chunk_is_short_then_whole_clauses(
    inference_server: RunningServer,
) -> None:
    """A reply's first chunk ends after ``tts.first_chunk_words`` (6) words when no clause
    mark comes sooner: the caller hears audio before the LLM finishes the first clause."""
    events, _audio = await _tts(
        inference_server,
        ["You can reset your password on our", " website in a minute. Then log in."],
    )
    texts = [e["text"] for e in events if e["type"] == "audio_start"]
    assert texts == ["You can reset your password on", "our website in a minute.", "Then log in."]


async def test_stt_stream_interims_then_final(inference_server: RunningServer) -> None:
    sentence = "I would like to check the status of my order please."
    _events, audio = await _tts(inference_server, [sentence])
    pcm = _speech_16k(audio)
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, inference_server, {"op": "stt", "call_id": "t"})
        chunk = 3200  # 100 ms
        for i in range(0, len(pcm), chunk):
            await ws.send_bytes(pcm[i : i + chunk])
            await asyncio.sleep(0.1)  # paced like a live caller so interims can happen
        await ws.send_json({"type": "flush"})
        await ws.send_json({"type": "end_input"})  # nothing left: no second final
        frames = await _frames(ws)
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["final", "done"], frames
    assert kinds.count("final") == 1
    assert "interim" in kinds
    final = frames[-2]
    assert final["segment"] == 0
    assert abs(final["audio_ms"] - len(pcm) * 1000 // 32000) <= 1
    assert word_error_rate(sentence, final["text"]) <= 0.2, final["text"]


async def test_stt_flush_without_audio_gives_an_empty_final(
    inference_server: RunningServer,
) -> None:
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, inference_server, {"op": "stt", "call_id": "t", "interim": False})
        await ws.send_json({"type": "flush"})
        await ws.send_json({"type": "end_input"})
        frames = await _frames(ws)
    assert frames == [
        {"type": "final", "text": "", "audio_ms": 0, "segment": 0},
        {"type": "done"},
    ]


# -- bad input ----------------------------------------------------------------------------------
async def test_malformed_json_is_a_bad_request(inference_server: RunningServer) -> None:
    err = await _error(inference_server, "{this is not json")
    assert err["code"] == "bad_request" and "JSON" in err["message"]
    await _assert_still_serving(inference_server)


async def test_unknown_op(inference_server: RunningServer) -> None:
    err = await _error(inference_server, json.dumps({"op": "translate", "call_id": "t"}))
    assert err["code"] == "unknown_op"
    await _assert_still_serving(inference_server)


async def test_binary_first_frame_and_bad_control_frames(inference_server: RunningServer) -> None:
    assert (await _error(inference_server, b"\x00\x01"))["code"] == "bad_request"
    start = json.dumps({"op": "tts", "call_id": "t"})
    err = await _error(inference_server, start, json.dumps({"type": "explode"}))
    assert err["code"] == "bad_request"
    err = await _error(inference_server, start, b"\x00\x00")
    assert err["code"] == "bad_request"


async def test_hostile_text_is_a_bad_request_not_an_internal_error(
    inference_server: RunningServer,
) -> None:
    start = json.dumps({"op": "tts", "call_id": "t"})
    for text in ('"a\\u0000b"', '"a\\ud800b"'):
        err = await _error(inference_server, start, '{"type": "push_text", "text": ' + text + "}")
        assert err["code"] == "bad_request", err
    err = await _error(inference_server, "[" * 5_000 + "]" * 5_000)  # deeper than recursion
    assert err["code"] == "bad_request" and "deeply" in err["message"]
    await _assert_still_serving(inference_server)


async def test_control_characters_never_reach_piper(inference_server: RunningServer) -> None:
    events, audio = await _tts(inference_server, ["Hello\x07 there\x1b[31m, and bye.\x7f"])
    assert [e["type"] for e in events][-1] == "done"
    spoken = " ".join(e["text"] for e in events if e["type"] == "audio_start")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in spoken), spoken
    assert len(audio) > 0


async def test_stt_language_the_model_does_not_know(inference_server: RunningServer) -> None:
    err = await _error(
        inference_server, json.dumps({"op": "stt", "call_id": "t", "language": "de"})
    )
    assert err["code"] == "bad_request" and "'de'" in err["message"]


async def test_oversized_audio_frame(inference_server: RunningServer) -> None:
    start = json.dumps({"op": "stt", "call_id": "t"})
    too_big = bytes(inference_server.server.config.limits.max_audio_frame_bytes + 2)
    err = await _error(inference_server, start, too_big)
    assert err["code"] == "payload_too_large"
    await _assert_still_serving(inference_server)


async def test_long_silence_without_a_flush_keeps_the_newest_audio(
    inference_server: RunningServer,
) -> None:
    """A caller on hold: the client streams silence far past ``max_utterance_s`` without a
    flush; the stream stays open, the oldest audio is dropped (and counted), and the flush
    transcribes only the newest ``max_utterance_s``."""
    limit_s = inference_server.server.config.limits.max_utterance_s
    metric = "voicestack_inference_stt_audio_dropped_seconds_total"
    dropped_before = await _metric(inference_server, metric)
    extra_s = 3
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, inference_server, {"op": "stt", "call_id": "t", "interim": False})
        for _ in range(int(limit_s) + extra_s):
            await ws.send_bytes(bytes(16_000))  # half a second per frame, two per second
            await ws.send_bytes(bytes(16_000))
        await ws.send_json({"type": "flush"})
        await ws.send_json({"type": "end_input"})
        frames = await _frames(ws)
    assert [f["type"] for f in frames] == ["final", "done"], frames
    assert frames[0]["segment"] == 0
    assert frames[0]["audio_ms"] == int(limit_s * 1000)
    dropped = await _metric(inference_server, metric) - dropped_before
    assert dropped == pytest.approx(int(limit_s) + extra_s - limit_s)


async def test_flush_after_a_long_segment_transcribes_only_the_newest_audio(
    inference_server: RunningServer,
) -> None:
    """Speech, a hold longer than ``max_utterance_s``, then speech again, all in one segment:
    the final has the second sentence and nothing of the first; the next segment starts with a
    full window again."""
    limit_s = inference_server.server.config.limits.max_utterance_s
    first, second = "My account number is seven.", "I would like to cancel my order please."
    _e, audio_first = await _tts(inference_server, [first])
    _e, audio_second = await _tts(inference_server, [second])
    pcm_first, pcm_second = _speech_16k(audio_first), _speech_16k(audio_second)
    assert len(pcm_second) < limit_s * 32_000 - 32_000  # room for some silence before it
    silence = bytes(int(limit_s * 32_000))  # alone pushes the first sentence out of the window
    segment = pcm_first + silence + pcm_second
    chunk = 16_000
    async with aiohttp.ClientSession() as s:
        ws = await _start(s, inference_server, {"op": "stt", "call_id": "t", "interim": False})
        for i in range(0, len(segment), chunk):
            await ws.send_bytes(segment[i : i + chunk])
        await ws.send_json({"type": "flush"})
        for i in range(0, len(pcm_second), chunk):  # the next segment: under the limit, whole
            await ws.send_bytes(pcm_second[i : i + chunk])
        await ws.send_json({"type": "end_input"})
        frames = await _frames(ws)
    assert [f["type"] for f in frames] == ["final", "final", "done"], frames
    final, nxt = frames[0], frames[1]
    assert abs(final["audio_ms"] - limit_s * 1000) <= 1
    assert word_error_rate(second, final["text"]) <= 0.2, final["text"]
    assert "account" not in final["text"].lower(), final["text"]
    assert nxt["segment"] == 1 and abs(nxt["audio_ms"] - len(pcm_second) * 1000 // 32_000) <= 1
    assert word_error_rate(second, nxt["text"]) <= 0.2, nxt["text"]
    await _assert_still_serving(inference_server)


async def test_max_tokens_over_the_server_cap(inference_server: RunningServer) -> None:
    frames = await _llm(inference_server, max_tokens=100_000)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "bad_request"


# -- cancellation, disconnects, admission -------------------------------------------------------
async def _wait_idle(server: RunningServer) -> dict[str, Any]:
    """Poll until no stream is open and no engine has work; return the capacity snapshot."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            cap = await _get_json(server.url + "/v1/capacity")
            # Judge idleness from the snapshot itself: checking the runners after fetching it
            # could accept a snapshot taken while aborted work was still draining.
            if not any(cap["active_streams"].values()) and not any(
                e["busy"] or e["queue_depth"] for e in cap["engines"].values()
            ):
                return dict(cap)
            await asyncio.sleep(0.05)


async def test_cancel_frame_stops_the_generation(inference_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as s:
        ws = await _start(
            s,
            inference_server,
            {"op": "llm", "call_id": "t", "messages": STORY, "max_tokens": 300},
        )
        first = await ws.receive_json(timeout=TIMEOUT)
        assert first["type"] == "token"
        await ws.send_json({"type": "cancel"})
        frames = await _frames(ws)
    done = frames[-1]
    assert done["type"] == "done" and done["finish_reason"] == "cancelled", frames
    assert done["usage"]["completion_tokens"] < 300
    await _wait_idle(inference_server)


async def test_client_vanishing_mid_stream_frees_the_engine(
    inference_server: RunningServer,
) -> None:
    cancelled_before = await _metric(
        inference_server, "voicestack_inference_work_items_total", 'engine="llm",state="cancelled"'
    )
    async with aiohttp.ClientSession() as s:
        ws = await _start(
            s,
            inference_server,
            {"op": "llm", "call_id": "t", "messages": STORY, "max_tokens": 400},
        )
        for _ in range(3):
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "token"
        await ws.close()  # leave without a word
    cap = await _wait_idle(inference_server)
    assert cap["active_streams"]["llm"] == 0
    cancelled_after = await _metric(
        inference_server, "voicestack_inference_work_items_total", 'engine="llm",state="cancelled"'
    )
    assert cancelled_after == cancelled_before + 1
    # Token production has stopped: the counter no longer moves.
    tokens = await _metric(inference_server, "voicestack_inference_llm_tokens_total")
    await asyncio.sleep(0.3)
    assert await _metric(inference_server, "voicestack_inference_llm_tokens_total") == tokens
    await _assert_still_serving(inference_server)


async def test_stt_and_tts_clients_vanishing_mid_work_free_the_engines(
    inference_server: RunningServer,
) -> None:
    await _wait_idle(inference_server)
    async with aiohttp.ClientSession() as s:
        tts = await _start(s, inference_server, {"op": "tts", "call_id": "t"})
        long_text = " ".join(["This sentence is here to keep the voice busy for a while."] * 6)
        await tts.send_json({"type": "push_text", "text": long_text})
        await tts.send_json({"type": "flush"})
        assert (await tts.receive_json(timeout=TIMEOUT))["type"] == "audio_start"
        await tts.close()
        stt = await _start(s, inference_server, {"op": "stt", "call_id": "t"})
        await stt.send_bytes(bytes(32_000))
        await stt.send_bytes(bytes(32_000))
        await stt.send_json({"type": "flush"})
        await stt.close()  # before the final arrives
    cap = await _wait_idle(inference_server)
    assert cap["load"] == 0.0
    _events, audio = await _tts(inference_server, ["Still here."])
    assert len(audio) > 0


async def test_streams_beyond_capacity_are_refused(inference_server: RunningServer) -> None:
    await _wait_idle(inference_server)
    async with aiohttp.ClientSession() as s:
        held = []
        limits = inference_server.server.config.limits
        for _ in range(limits.max_streams_llm):
            ws = await _start(
                s,
                inference_server,
                {"op": "llm", "call_id": "t", "messages": STORY, "max_tokens": 400},
            )
            held.append(ws)
        # All admitted streams are open once the first of them produces a token.
        assert (await held[0].receive_json(timeout=TIMEOUT))["type"] == "token"
        async with asyncio.timeout(TIMEOUT):
            while True:
                cap = await _get_json(inference_server.url + "/v1/capacity")
                if cap["active_streams"]["llm"] == limits.max_streams_llm:
                    break
                await asyncio.sleep(0.02)
        cap = await _get_json(inference_server.url + "/v1/capacity")
        assert cap["load"] == 1.0 and cap["accepting"] is False
        extra = await _start(s, inference_server, {"op": "llm", "call_id": "t", "messages": STORY})
        frames = await _frames(extra)
        assert frames == [frames[0]] and frames[0]["code"] == "overloaded", frames
        for ws in held:
            await ws.close()
    await _wait_idle(inference_server)
    await _assert_still_serving(inference_server)


async def test_concurrent_clients_all_complete(inference_server: RunningServer) -> None:
    await _wait_idle(inference_server)
    sentence = "Please hold while I transfer you to billing."
    _e, speech = await _tts(inference_server, [sentence])
    pcm = _speech_16k(speech)

    async def stt_client() -> str:
        async with aiohttp.ClientSession() as s:
            # One call for every client: a second call opened while the first one's work runs
            # is judged on the measured load and may be refused on a slow machine (admission
            # is tested in test_server_load.py and test_admission.py).
            ws = await _start(s, inference_server, {"op": "stt", "call_id": "t"})
            for i in range(0, len(pcm), 16000):
                await ws.send_bytes(pcm[i : i + 16000])
            await ws.send_json({"type": "end_input"})
            frames = await _frames(ws)
        finals = [f for f in frames if f["type"] == "final"]
        assert frames[-1] == {"type": "done"} and len(finals) == 1
        return str(finals[0]["text"])

    async def llm_client(n: int) -> dict[str, Any]:
        frames = await _llm(inference_server, max_tokens=8, temperature=0.0, seed=n)
        return dict(frames[-1])

    async def tts_client(text: str) -> list[str]:
        events, audio = await _tts(inference_server, [text])
        assert len(audio) > 0
        return [e["text"] for e in events if e["type"] == "audio_start"]

    results = await asyncio.gather(
        stt_client(),
        llm_client(1),
        llm_client(2),
        llm_client(3),
        tts_client("Good morning. Your order has shipped."),
        tts_client("Goodbye and have a nice day."),
    )
    assert word_error_rate(sentence, results[0]) <= 0.2, results[0]
    for done in results[1:4]:
        assert done["type"] == "done" and done["usage"]["completion_tokens"] == 8, done
    assert results[4] == ["Good morning.", "Your order has shipped."]
    assert results[5] == ["Goodbye and have a nice day."]
    cap = await _wait_idle(inference_server)
    assert cap["load"] == 0.0


async def test_connections_that_never_start_are_capped(inference_server: RunningServer) -> None:
    """Idle upgraded connections (no start frame) are refused beyond
    ``limits.max_unstarted_connections`` with HTTP 503; real streams keep being served."""
    server = inference_server.server
    limit = server.config.limits.max_unstarted_connections
    async with aiohttp.ClientSession() as s:
        idle = [await s.ws_connect(inference_server.ws_url) for _ in range(limit)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(inference_server.ws_url)
        assert err.value.status == 503
        for ws in idle:
            await ws.close()
        async with asyncio.timeout(TIMEOUT):
            while True:
                if server._unstarted == 0:
                    break
                await asyncio.sleep(0.02)
    await _assert_still_serving(inference_server)


@pytest.mark.security
async def test_slowloris_and_thousands_of_idle_connections(
    inference_server: RunningServer,
) -> None:
    """3000 connections that never finish their headers (1500 idle, 1500 sending a byte every
    0.2 s) while a live stream generates: beyond ``limits.max_connections`` they are closed at
    once, the rest when ``limits.header_timeout_s`` passes; the live stream finishes untouched
    and new streams are served afterwards."""
    server = inference_server.server
    limits = server.config.limits
    host, port = inference_server.url.removeprefix("http://").rsplit(":", 1)
    before_slow = await _metric(
        inference_server, "voicestack_inference_requests_total", 'op="http",outcome="slow_headers"'
    )
    async with aiohttp.ClientSession() as s:
        live = await _start(
            s,
            inference_server,
            {
                "op": "llm",
                "call_id": "live",
                "messages": STORY,
                "max_tokens": 60,
                "temperature": 0.0,
            },
        )
        first = await live.receive_json(timeout=TIMEOUT)  # generating before the attack starts
        assert first["type"] in {"token", "text"}, first
        started = asyncio.get_running_loop().time()
        attackers = [await asyncio.open_connection(host, int(port)) for _ in range(3000)]
        opened_s = asyncio.get_running_loop().time() - started

        async def dribble(writer: asyncio.StreamWriter) -> None:
            for byte in b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa":
                if writer.is_closing():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)

        dribblers = [asyncio.create_task(dribble(w)) for _, w in attackers[1500:]]
        frames = [first, *await _frames(live)]
        assert frames[-1]["type"] == "done", frames[-3:]

        async def closed(reader: asyncio.StreamReader) -> None:
            while await reader.read(4096):
                pass

        async with asyncio.timeout(limits.header_timeout_s + TIMEOUT):
            await asyncio.gather(*(closed(r) for r, _ in attackers), return_exceptions=True)
        reaped_s = asyncio.get_running_loop().time() - started
        for task in dribblers:
            task.cancel()
        for _, writer in attackers:
            writer.close()
    guard_refused = await _metric(
        inference_server,
        "voicestack_inference_requests_total",
        'op="http",outcome="too_many_connections"',
    )
    slow = await _metric(
        inference_server, "voicestack_inference_requests_total", 'op="http",outcome="slow_headers"'
    )
    print(
        f"slowloris: 3000 opened in {opened_s:.2f} s; all closed by the server after "
        f"{reaped_s:.1f} s (header_timeout_s={limits.header_timeout_s}); refused at the cap "
        f"{guard_refused:.0f}, closed slow {slow - before_slow:.0f}; live stream done with "
        f"{frames[-1]['usage']['completion_tokens']} tokens"
    )
    assert guard_refused >= 3000 - limits.max_connections
    assert slow - before_slow >= 1
    await _assert_still_serving(inference_server)
