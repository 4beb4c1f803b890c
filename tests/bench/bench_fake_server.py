"""A scripted inference server for the benchmark's logic tests: the real stream protocol
(docs/inference-protocol.md) over real loopback WebSockets, canned outputs instead of models.

It records each stream (op, start frame, audio bytes received, how it ended) so tests can check
what the synthetic caller sent and that abandoned streams were closed (cancelled).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass
class Seen:
    op: str
    start: dict[str, Any]
    audio_bytes: int = 0
    verbs: list[str] = field(default_factory=list)
    ended: str = "open"  # done | client_closed | error


@dataclass
class Script:
    final_text: str = "where is my order"
    tokens: tuple[str, ...] = ("Sure", ".", " Let", " me", " check", " that", ".")
    token_delay_s: float = 0.0
    tts_rate: int = 22050
    tts_bytes_per_char: int = 441 * 2  # 20 ms of audio per character
    refuse: dict[str, str] = field(default_factory=dict)  # op -> error code at start
    llm_hangs: bool = False  # never answers: the client must time out and close


class FakeServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ops(self, op: str) -> list[Seen]:
        return [s for s in self.seen if s.op == op]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/stream", self._stream)
        app.router.add_get("/v1/capacity", self._capacity)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _capacity(self, request: web.Request) -> web.Response:
        active = {
            op: sum(1 for s in self.ops(op) if s.ended == "open") for op in ("stt", "llm", "tts")
        }
        return web.json_response({"load": 0.0, "active_streams": active, "accepting": True})

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        start = json.loads(first.data)
        seen = Seen(op=start["op"], start=start)
        self.seen.append(seen)
        code = self.script.refuse.get(seen.op)
        if code is not None:
            await ws.send_json({"type": "error", "code": code, "message": "scripted"})
            seen.ended = "error"
            await ws.close()
            return ws
        try:
            handler = {"stt": self._stt, "llm": self._llm, "tts": self._tts}[seen.op]
            await handler(ws, seen)
        finally:
            if seen.ended == "open":
                seen.ended = "client_closed"
        return ws

    async def _stt(self, ws: web.WebSocketResponse, seen: Seen) -> None:
        buffered = 0
        segment = 0
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                seen.audio_bytes += len(msg.data)
                buffered += len(msg.data)
                continue
            verb = json.loads(msg.data)["type"]
            seen.verbs.append(verb)
            if verb == "flush":
                await ws.send_json(
                    {"type": "final", "text": self.script.final_text,
                     "audio_ms": buffered // 32, "segment": segment}
                )  # fmt: skip
                buffered = 0
                segment += 1
            elif verb == "end_input":
                await ws.send_json({"type": "done"})
                seen.ended = "done"
                await ws.close()

    async def _llm(self, ws: web.WebSocketResponse, seen: Seen) -> None:
        if self.script.llm_hangs:
            async for _ in ws:
                pass
            return
        for tok in self.script.tokens:
            if self.script.token_delay_s:
                await asyncio.sleep(self.script.token_delay_s)
            await ws.send_json({"type": "token", "text": tok})
        await ws.send_json({"type": "done", "finish_reason": "stop", "usage": {}})
        seen.ended = "done"
        await ws.close()

    async def _tts(self, ws: web.WebSocketResponse, seen: Seen) -> None:
        text = ""
        segment = 0
        async for msg in ws:
            body = json.loads(msg.data)
            seen.verbs.append(body["type"])
            if body["type"] == "push_text":
                text += body["text"]
            if body["type"] in ("push_text", "flush") and text.strip() and segment == 0:
                # speak what has arrived so far as the first segment (a stand-in clause split)
                await self._speak(ws, segment, text)
                text = ""
                segment += 1
            elif body["type"] == "end_input":
                if text.strip():
                    await self._speak(ws, segment, text)
                await ws.send_json({"type": "done"})
                seen.ended = "done"
                await ws.close()

    async def _speak(self, ws: web.WebSocketResponse, segment: int, text: str) -> None:
        await ws.send_json(
            {"type": "audio_start", "segment": segment, "sample_rate": self.script.tts_rate,
             "text": text}
        )  # fmt: skip
        await ws.send_bytes(b"\x00\x00" * (len(text) * self.script.tts_bytes_per_char // 2))
        await ws.send_json({"type": "audio_end", "segment": segment})
