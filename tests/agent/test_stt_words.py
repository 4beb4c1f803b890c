"""``transcribe_words`` against scripted WebSocket servers (no models): what it sends, its
errors, its deadline, its retries after a refusal, and that it closes the stream on every path,
cancellation included. The real-server test is tests/inference/test_stt_words_stream.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from worker.agent.plugins.stt_words import TranscriptionError, transcribe_words
from worker.inference.words import Word

Handler = Callable[[web.WebSocketResponse, dict[str, Any], "Seen"], Awaitable[None]]


class Seen:
    """What the scripted server saw."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.audio_bytes = 0
        self.controls: list[str] = []
        self.ended = asyncio.Event()  # end_input arrived
        self.closed = asyncio.Event()  # a stream's socket closed


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        start = json.loads(first.data)
        seen.starts.append(start)
        try:
            await handler(ws, start, seen)
        finally:
            if ws.closed:  # every handler returns once the socket is closed, by either side
                seen.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def _read_until_end(ws: web.WebSocketResponse, seen: Seen) -> int:
    """Audio bytes until end_input."""
    nbytes = 0
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            nbytes += len(msg.data)
            seen.audio_bytes += len(msg.data)
        elif msg.type == WSMsgType.TEXT:
            kind = json.loads(msg.data)["type"]
            seen.controls.append(kind)
            if kind == "end_input":
                seen.ended.set()
                break
    return nbytes


async def _answer(ws: web.WebSocketResponse, seen: Seen) -> None:
    nbytes = await _read_until_end(ws, seen)
    words = [["card", 0.5, 0.8], ["4111.", 0.9, 1.4]]
    await ws.send_json(
        {
            "type": "final",
            "text": " card 4111.",
            "audio_ms": nbytes // 32,
            "segment": 0,
            "words": words,
        }
    )
    await ws.send_json({"type": "done"})
    await ws.close()


async def _silent(ws: web.WebSocketResponse, seen: Seen) -> None:
    await _read_until_end(ws, seen)
    async for _ in ws:  # never answers; returns when the client closes
        pass


async def test_sends_a_words_stream_and_returns_the_final() -> None:
    async with scripted(lambda ws, start, seen: _answer(ws, seen)) as (url, seen):
        samples = np.zeros(8000 * 3, np.int16)  # 3 s at 8 kHz
        text, words = await transcribe_words(url, samples, 8000, call_id="rec-1")
    assert text == "card 4111."
    assert words == (Word("card", 0.5, 0.8), Word("4111.", 0.9, 1.4))
    assert seen.starts == [
        {"op": "stt", "call_id": "rec-1", "sample_rate": 16000, "interim": False, "words": True}
    ]
    assert seen.audio_bytes == 3 * 32000  # resampled to 16 kHz s16le
    assert seen.controls == ["flush", "end_input"]


async def test_deadline_raises_and_closes_the_stream() -> None:
    async with scripted(lambda ws, start, seen: _silent(ws, seen)) as (url, seen):
        with pytest.raises(TranscriptionError) as info:
            await transcribe_words(
                url, np.zeros(1600, np.float32), 16000, call_id="c", timeout_s=0.5
            )
        assert info.value.code == "timeout"
        await asyncio.wait_for(seen.closed.wait(), 5)


async def test_cancellation_closes_the_stream() -> None:
    async with scripted(lambda ws, start, seen: _silent(ws, seen)) as (url, seen):
        task = asyncio.create_task(
            transcribe_words(url, np.zeros(1600, np.float32), 16000, call_id="c")
        )
        await asyncio.wait_for(seen.ended.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen.closed.wait(), 5)


async def test_refusal_for_load_is_retried_then_answered() -> None:
    async def handler(ws: web.WebSocketResponse, start: dict[str, Any], seen: Seen) -> None:
        if len(seen.starts) == 1:
            await ws.send_json({"type": "error", "code": "overloaded", "message": "busy"})
            await ws.close()
            return
        await _answer(ws, seen)

    async with scripted(handler) as (url, seen):
        text, _ = await transcribe_words(url, np.zeros(1600, np.int16), 16000, call_id="c")
    assert text == "card 4111." and len(seen.starts) == 2


async def test_client_errors_are_not_retried() -> None:
    async def handler(ws: web.WebSocketResponse, start: dict[str, Any], seen: Seen) -> None:
        await ws.send_json({"type": "error", "code": "bad_request", "message": "no"})
        await ws.close()

    async with scripted(handler) as (url, seen):
        with pytest.raises(TranscriptionError) as info:
            await transcribe_words(url, np.zeros(1600, np.int16), 16000, call_id="c")
    assert info.value.code == "bad_request" and len(seen.starts) == 1


async def test_malformed_words_and_bad_input() -> None:
    async def handler(ws: web.WebSocketResponse, start: dict[str, Any], seen: Seen) -> None:
        nbytes = await _read_until_end(ws, seen)
        await ws.send_json(
            {
                "type": "final",
                "text": "x",
                "audio_ms": nbytes // 32,
                "segment": 0,
                "words": [["x", 2.0, 1.0]],
            }
        )
        await ws.send_json({"type": "done"})
        await ws.close()

    async with scripted(handler) as (url, _seen):
        with pytest.raises(TranscriptionError, match="malformed word timings"):
            await transcribe_words(url, np.zeros(1600, np.int16), 16000, call_id="c")
    with pytest.raises(TranscriptionError, match="longer than"):
        await transcribe_words(url, np.zeros(16000 * 31, np.int16), 16000, call_id="c")
    with pytest.raises(ValueError, match="mono"):
        await transcribe_words(url, np.zeros((2, 100), np.int16), 16000, call_id="c")
