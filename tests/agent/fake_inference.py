"""A fake inference server for plugin tests: the real protocol (docs/inference-protocol.md)
over real WebSockets on loopback, with scripted model outputs instead of models.

It records what clients sent and how each stream ended, so tests can check that the plugins
speak the protocol and that a cancelled stream really reaches the server.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass
class StreamRecord:
    op: str
    start: dict[str, Any]
    received: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    ended: str = "open"  # "done" | "client_closed" | "error"


@dataclass
class FakeScript:
    """What the fake "models" answer."""

    stt_finals: list[str] = field(default_factory=lambda: ["hello there"])
    llm_tokens: list[str] = field(
        default_factory=lambda: ["Hi", ",", " how", " can", " I", " help", "?"]
    )
    llm_token_delay_s: float = 0.0
    tts_sample_rate: int = 22050
    tts_ms_per_char: float = 20.0
    error_code: str | None = None  # every new stream gets this error at once


class FakeInferenceServer:
    def __init__(self, script: FakeScript | None = None) -> None:
        self.script = script or FakeScript()
        self.streams: list[StreamRecord] = []
        self.active: dict[str, int] = {"stt": 0, "llm": 0, "tts": 0}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/v1/capacity", self._capacity)
        app.router.add_get("/v1/stream", self._stream)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _capacity(self, request: web.Request) -> web.Response:
        load = min(1.0, sum(self.active.values()) / 10)
        return web.json_response(
            {"load": load, "active_streams": dict(self.active), "accepting": load < 1.0}
        )

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        start = json.loads(first.data)
        rec = StreamRecord(op=start.get("op", ""), start=start)
        self.streams.append(rec)
        if self.script.error_code:
            rec.ended = "error"
            await ws.send_json(
                {"type": "error", "code": self.script.error_code, "message": "scripted"}
            )
            await ws.close()
            return ws
        handler = {"stt": self._stt, "llm": self._llm, "tts": self._tts}.get(rec.op)
        if handler is None:
            rec.ended = "error"
            await ws.send_json({"type": "error", "code": "unknown_op", "message": rec.op})
            await ws.close()
            return ws
        self.active[rec.op] += 1
        try:
            await handler(ws, rec)
        finally:
            self.active[rec.op] -= 1
            if rec.ended == "open":
                rec.ended = "client_closed"
        return ws

    async def _stt(self, ws: web.WebSocketResponse, rec: StreamRecord) -> None:
        buffered = 0
        segment = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                buffered += len(msg.data)
                rec.audio_bytes += len(msg.data)
                if rec.start.get("interim", True):
                    await ws.send_json(
                        {
                            "type": "interim",
                            "text": f"partial {buffered // 32}",
                            "audio_ms": buffered // 32,
                        }
                    )
                continue
            if msg.type != WSMsgType.TEXT:
                break
            cmd = json.loads(msg.data)
            rec.received.append(cmd)
            if cmd["type"] in ("flush", "end_input") and (buffered or cmd["type"] == "flush"):
                finals = self.script.stt_finals
                text = finals[segment % len(finals)] if buffered else ""
                await ws.send_json(
                    {"type": "final", "text": text, "audio_ms": buffered // 32, "segment": segment}
                )
                segment += 1
                buffered = 0
            if cmd["type"] == "end_input":
                await ws.send_json({"type": "done"})
                rec.ended = "done"
                await ws.close()
                return

    async def _llm(self, ws: web.WebSocketResponse, rec: StreamRecord) -> None:
        async def produce() -> None:
            for tok in self.script.llm_tokens:
                if self.script.llm_token_delay_s:
                    await asyncio.sleep(self.script.llm_token_delay_s)
                await ws.send_json({"type": "token", "text": tok})
            await ws.send_json(
                {
                    "type": "done",
                    "finish_reason": "stop",
                    "usage": {
                        "prompt_tokens": 11,
                        "completion_tokens": len(self.script.llm_tokens),
                    },
                }
            )
            rec.ended = "done"
            await ws.close()

        task = asyncio.create_task(produce())
        # A client close (or cancel) stops production, like the real server's engine slot.
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                rec.received.append(json.loads(msg.data))
        if not task.done():
            task.cancel()
            rec.ended = "client_closed"
        try:
            await task
        except (asyncio.CancelledError, ConnectionResetError):
            pass

    async def _tts(self, ws: web.WebSocketResponse, rec: StreamRecord) -> None:
        pending = ""
        segment = 0

        async def speak(text: str) -> None:
            nonlocal segment
            rate = self.script.tts_sample_rate
            await ws.send_json(
                {"type": "audio_start", "segment": segment, "sample_rate": rate, "text": text}
            )
            n = int(rate * len(text) * self.script.tts_ms_per_char / 1000)
            pcm = b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(n)
            )
            for i in range(0, len(pcm), rate):  # frames of at most 0.5 s
                await ws.send_bytes(pcm[i : i + rate])
            await ws.send_json({"type": "audio_end", "segment": segment})
            segment += 1

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            cmd = json.loads(msg.data)
            rec.received.append(cmd)
            if cmd["type"] == "push_text":
                pending += cmd["text"]
                while (m := re.search(r"[.!?,;:](\s|$)", pending)) is not None:
                    clause, pending = pending[: m.end()].strip(), pending[m.end() :]
                    if clause:
                        await speak(clause)
            elif cmd["type"] in ("flush", "end_input"):
                if pending.strip():
                    await speak(pending.strip())
                pending = ""
                if cmd["type"] == "end_input":
                    await ws.send_json({"type": "done"})
                    rec.ended = "done"
                    await ws.close()
                    return


@asynccontextmanager
async def fake_inference(script: FakeScript | None = None) -> AsyncIterator[FakeInferenceServer]:
    server = FakeInferenceServer(script)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
