"""The console's live side: server-sent events, JSON endpoints and the call actions.

``/events`` streams the agents' live events to one browser: the current snapshot first, then
every event, through a bounded queue per browser (a slow browser loses events; the console and
the other browsers do not wait for it), with keep-alive comments so proxies keep it open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from worker.console import pages
from worker.console.app import STATE, USER, ConsoleState, render, wants_json
from worker.console.pages import CALL_ID, filters_of, history_query, in_thread, store_of
from worker.console.rooms import delete_room
from worker.inference.protocol import auth_headers

__all__ = ["KEEPALIVE_S", "add_routes"]

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
_CLIENT_QUEUE = 256
_CAPACITY_CACHE_S = 2.0
_NO_AGENT = "no agent answered"


async def _snapshot(state: ConsoleState) -> tuple[list[dict[str, Any]], str]:
    try:
        return await state.feed.snapshot(), ""
    except (RedisError, OSError, TimeoutError) as err:
        return [], f"live feed unavailable: {err}"


async def _pump(state: ConsoleState, queue: asyncio.Queue[dict[str, Any]]) -> None:
    async for event in state.feed.subscribe():
        if queue.full():
            queue.get_nowait()  # drop the oldest: the browser wants what happens now
        queue.put_nowait(event)


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, default=str)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """``/events``: ``snapshot`` (the live calls), then each live event as it comes."""
    state = request.app[STATE]
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_CLIENT_QUEUE)
    pump = asyncio.create_task(_pump(state, queue), name="console-sse")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx in front: do not buffer the stream
        }
    )
    try:
        await response.prepare(request)
        await asyncio.sleep(0)  # let the pump subscribe before the snapshot is read
        calls, error = await _snapshot(state)
        await response.write(_sse({"calls": calls, "error": error}, "snapshot"))
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(_sse(event))
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    return response


async def live_calls(request: web.Request) -> web.Response:
    """``/api/live``: the live calls' snapshots (the page reconciles its table with it)."""
    calls, error = await _snapshot(request.app[STATE])
    return web.json_response({"calls": calls, "error": error, "now": time.time()})


async def capacity(request: web.Request) -> web.Response:
    """``/api/capacity``: the inference server's ``/v1/capacity``, or why it is unreachable."""
    state = request.app[STATE]
    cached = state.capacity_cache
    if cached is not None and time.monotonic() - cached[0] < _CAPACITY_CACHE_S:
        return web.json_response(cached[1])
    url = state.settings.inference_url.rstrip("/") + "/v1/capacity"
    body: dict[str, Any]
    try:
        assert state.http is not None
        async with asyncio.timeout(state.settings.capacity_timeout_s):
            token = state.settings.env.get("VOICESTACK_INFERENCE_TOKEN")
            async with state.http.get(url, headers=auth_headers(token or "")) as resp:
                resp.raise_for_status()
                body = {"ok": True, "capacity": await resp.json(content_type=None)}
    except Exception as err:  # any failure reads "unreachable" on the page
        body = {"ok": False, "error": f"unreachable ({type(err).__name__})"}
    state.capacity_cache = (time.monotonic(), body)
    return web.json_response(body)


async def stats(request: web.Request) -> web.Response:
    """``/api/stats``: p50/p95 per stage over the last agent replies seen."""
    return web.json_response(request.app[STATE].stats.summary())


async def history(request: web.Request) -> web.Response:
    """``/api/calls``: the history search as JSON (same filters as ``/calls``)."""
    state = request.app[STATE]
    try:
        page = max(0, int(request.query.get("page", "0")))
    except ValueError as err:
        raise web.HTTPBadRequest(text="page must be a number") from err
    rows = await in_thread(store_of(state).search, history_query(filters_of(request), page))
    return web.json_response([r.model_dump(mode="json") for r in rows[: pages.PAGE_SIZE]])


async def _act(request: web.Request, action: str) -> web.Response:
    state = request.app[STATE]
    call_id = request.match_info["call_id"]
    form = await request.post()
    target: str | None = None
    if action == "transfer":
        target = str(form.get("target", ""))
        if target not in state.settings.transfer_targets:
            raise web.HTTPBadRequest(text="unknown transfer target")
    user = request.get(USER, "operator")
    ok, detail = await state.feed.command(
        call_id, action, target=target, by=user, timeout_s=state.settings.command_timeout_s
    )
    if not ok and detail.startswith(_NO_AGENT) and action == "end":
        deleted, how = await delete_room(call_id, state.settings.env)
        ok, detail = deleted, f"{_NO_AGENT}; {how}"
    logger.info("console: %s asked to %s call %s: ok=%s %s", user, action, call_id, ok, detail)
    if wants_json(request):
        return web.json_response({"ok": ok, "detail": detail, "action": action})
    return render(
        request, "result.html", call_id=call_id, action=action, ok=ok, detail=detail, target=target
    )


async def end_call(request: web.Request) -> web.Response:
    """``POST /calls/{call_id}/end``: ask the call's agent to hang up (room deletion when no
    agent answers)."""
    return await _act(request, "end")


async def transfer_call(request: web.Request) -> web.Response:
    """``POST /calls/{call_id}/transfer`` (form field ``target``: a listed target name)."""
    return await _act(request, "transfer")


def add_routes(app: web.Application) -> None:
    """Register the live endpoints and actions (also under ``/api/`` for token clients)."""
    app.router.add_get("/events", events)
    app.router.add_get("/api/live", live_calls)
    app.router.add_get("/api/capacity", capacity)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/calls", history)
    for prefix in ("", "/api"):
        app.router.add_post(f"{prefix}/calls/{CALL_ID}/end", end_call)
        app.router.add_post(f"{prefix}/calls/{CALL_ID}/transfer", transfer_call)
