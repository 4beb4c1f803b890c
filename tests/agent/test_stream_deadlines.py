"""Every stream read in the agent plugins has a deadline once an answer is due: a server that
accepts a stream and then goes quiet fails the turn with ``APITimeoutError`` (the call guard
takes over) instead of hanging it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from livekit.agents import APITimeoutError
from local_http import serve_app

from worker.agent.plugins._client import InferenceClient, StreamDeadlines


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts streams, reads every frame, never answers."""

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    async with serve_app(app) as url:
        yield url


async def _drain(client: InferenceClient, op: str, *, due: bool) -> None:
    stream = await client.open({"op": op, "call_id": "c"})
    async with stream:
        if due:
            stream.expect()
        async for _ in stream.messages():
            pass


async def test_a_due_answer_that_never_comes_times_out(silent_server: str) -> None:
    client = InferenceClient(silent_server, deadlines=StreamDeadlines(stt=0.5))
    try:
        t0 = time.monotonic()
        with pytest.raises(APITimeoutError, match=r"sent nothing for 0\.5 s"):
            await asyncio.wait_for(_drain(client, "stt", due=True), 5)
        assert 0.5 <= time.monotonic() - t0 < 2.0
    finally:
        await client.aclose()


async def test_an_idle_stream_with_nothing_due_waits(silent_server: str) -> None:
    """Between turns the STT stream is legitimately quiet: no deadline then."""
    client = InferenceClient(silent_server, deadlines=StreamDeadlines(stt=0.3))
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_drain(client, "stt", due=False), 1.0)
    finally:
        await client.aclose()


async def test_an_llm_stream_owes_tokens_from_its_start(silent_server: str) -> None:
    client = InferenceClient(silent_server, deadlines=StreamDeadlines(llm=0.4))
    try:
        with pytest.raises(APITimeoutError):
            await asyncio.wait_for(_drain(client, "llm", due=False), 5)
    finally:
        await client.aclose()
