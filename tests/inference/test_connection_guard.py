"""The connection guard on a bare aiohttp app: headers must arrive in time, open connections are
capped, and neither limit touches a request or WebSocket that behaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from worker.inference.connection_guard import ConnectionGuard, GuardedSite

TIMEOUT_S = 0.5
Site = tuple[str, int, ConnectionGuard, list[str]]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", ws_echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    refusals: list[str] = []
    guard = ConnectionGuard(
        header_timeout_s=TIMEOUT_S, max_connections=16, on_refusal=refusals.append
    )
    guarded = GuardedSite(runner, "127.0.0.1", 0, guard)
    await guarded.start()
    port = int(runner.addresses[0][1])
    try:
        yield "127.0.0.1", port, guard, refusals
    finally:
        await runner.cleanup()


async def _closed_within(reader: asyncio.StreamReader, limit_s: float) -> bool:
    try:
        async with asyncio.timeout(limit_s):
            while await reader.read(4096):
                pass
        return True
    except TimeoutError:
        return False


async def _get(host: str, port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/healthz") as r:
        return await r.text()


async def test_headers_sent_a_byte_at_a_time_are_cut_off(site: Site) -> None:
    host, port, guard, refusals = site
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

    async def dribble() -> None:
        for byte in request:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(dribble())
    assert await _closed_within(reader, TIMEOUT_S + 2.0)
    sender.cancel()
    writer.close()
    assert refusals == ["slow_headers"] and guard.closed_slow == 1
    assert await _get(host, port) == "ok"
    assert guard.open == 0


async def test_an_idle_connection_is_closed_and_a_prompt_one_is_served(site: Site) -> None:
    host, port, _, refusals = site
    idle_r, idle_w = await asyncio.open_connection(host, port)
    reader, writer = await asyncio.open_connection(host, port)
    # Headers split across two writes, the end marker straddling them: still complete in time.
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
    assert await _closed_within(idle_r, TIMEOUT_S + 2.0)
    assert refusals == ["slow_headers"]
    writer.close()
    idle_w.close()


async def test_connections_beyond_the_cap_are_closed_at_once(site: Site) -> None:
    host, port, guard, refusals = site
    held = [await asyncio.open_connection(host, port) for _ in range(16)]
    await asyncio.sleep(0.05)
    assert guard.open == 16
    extra_r, extra_w = await asyncio.open_connection(host, port)
    assert await _closed_within(extra_r, 0.3)  # long before the header deadline
    assert guard.refused_at_cap == 1 and "too_many_connections" in refusals
    for _, w in held:
        w.close()
    extra_w.close()
    async with asyncio.timeout(5):
        while True:  # the server sees the closes a moment later
            if guard.open == 0:
                break
            await asyncio.sleep(0.01)
    assert await _get(host, port) == "ok"


async def test_a_websocket_outlives_the_header_deadline(site: Site) -> None:
    host, port, _, refusals = site
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://{host}:{port}/ws") as ws:
        await asyncio.sleep(TIMEOUT_S * 3)
        await ws.send_str("still here")
        msg = await ws.receive(timeout=5)
        assert msg.data == "still here"
    assert refusals == []
