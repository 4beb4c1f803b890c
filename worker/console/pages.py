"""The console's HTML pages: live calls, call history, one call, and its recording."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

from aiohttp import web

from worker.console.app import STATE, ConsoleState, render
from worker.console.charts import BAR_STAGES, latency_chart
from worker.console.stats import STAGES
from worker.records.record import CallRecord
from worker.records.store import CallSummary, RecordQuery, RecordStore, StoreError

__all__ = [
    "CALL_ID",
    "PAGE_SIZE",
    "add_routes",
    "filters_of",
    "history_query",
    "in_thread",
    "recording_path",
    "store_of",
]

PAGE_SIZE = 50
CALL_ID = r"{call_id:[^/]{1,200}}"
_OUTCOMES = ("completed", "transferred", "failed", "refused", "unanswered")
_STORE_TIMEOUT_S = 10.0
_AUDIO_TYPES = {"ogg": "audio/ogg", "flac": "audio/flac"}
T = TypeVar("T")


def store_of(state: ConsoleState) -> RecordStore:
    """The open store, or 503 naming why there is none."""
    if state.store is None:
        raise web.HTTPServiceUnavailable(
            text=f"call store unavailable: {state.store_error or 'not open'}"
        )
    return state.store


async def in_thread(call: Callable[..., T], *args: object) -> T:
    """Run a synchronous store call off the event loop, with a deadline."""
    try:
        result: T = await asyncio.wait_for(asyncio.to_thread(call, *args), _STORE_TIMEOUT_S)
    except (StoreError, TimeoutError) as err:
        raise web.HTTPServiceUnavailable(text=f"call store unavailable: {err}") from err
    return result


async def live_page(request: web.Request) -> web.Response:
    """``/``: the live calls table (filled by ``/events``), capacity and latency panels."""
    state = request.app[STATE]
    return render(
        request,
        "live.html",
        targets=sorted(state.settings.transfer_targets),
        stages=STAGES,
    )


def _day(value: str, *, end: bool) -> datetime | None:
    """A ``YYYY-MM-DD`` form value as the start of that day (UTC), or of the next with ``end``."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"not a date: {value!r}") from err
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def filters_of(request: web.Request) -> dict[str, str]:
    """The history filters of a request's query string."""
    keys = ("text", "caller", "flow", "outcome", "since", "until")
    return {k: request.query.get(k, "").strip()[:200] for k in keys}


def history_query(filters: dict[str, str], page: int) -> RecordQuery:
    """The store query of the history page's filters (one extra row tells a next page)."""
    outcome = filters["outcome"]
    if outcome and outcome not in _OUTCOMES:
        raise web.HTTPBadRequest(text=f"unknown outcome {outcome!r}")
    return RecordQuery(
        text=filters["text"] or None,
        caller=filters["caller"] or None,
        flow=filters["flow"] or None,
        outcome=outcome or None,
        since=_day(filters["since"], end=False),
        until=_day(filters["until"], end=True),
        limit=PAGE_SIZE + 1,
        offset=page * PAGE_SIZE,
    )


async def history_page(request: web.Request) -> web.Response:
    """``/calls``: finished calls, newest first, with search, filters and paging."""
    state = request.app[STATE]
    filters = filters_of(request)
    try:
        page = max(0, min(10_000, int(request.query.get("page", "0"))))
    except ValueError:
        page = 0
    query = history_query(filters, page)
    rows: list[CallSummary] = await in_thread(store_of(state).search, query)
    kept = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "calls.html",
        calls=rows[:PAGE_SIZE],
        filters=filters,
        outcomes=_OUTCOMES,
        page=page,
        prev_url=f"/calls?{urlencode(kept | {'page': page - 1})}" if page > 0 else "",
        next_url=f"/calls?{urlencode(kept | {'page': page + 1})}" if len(rows) > PAGE_SIZE else "",
    )


async def _record(request: web.Request) -> CallRecord:
    state = request.app[STATE]
    record: CallRecord | None = await in_thread(store_of(state).get, request.match_info["call_id"])
    if record is None:
        raise web.HTTPNotFound(text="no such call (a live call is listed here once it ends)")
    return record


async def call_page(request: web.Request) -> web.Response:
    """``/calls/{call_id}``: metadata, transcript, events, latency chart and recording."""
    record = await _record(request)
    return render(
        request,
        "call.html",
        call=record,
        chart=latency_chart(record.turns),
        stages=BAR_STAGES,
        agent_turns=[t for t in record.turns if t.role == "agent" and t.latency],
    )


def recording_path(recordings_dir: Path, relative: str) -> Path | None:
    """``relative`` inside ``recordings_dir``, or None when it escapes it or is no file."""
    base = recordings_dir.resolve()
    if not relative or Path(relative).is_absolute():
        return None
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


async def recording(request: web.Request) -> web.StreamResponse:
    """``/calls/{call_id}/recording``: the call's audio, only from the recordings directory."""
    state = request.app[STATE]
    record = await _record(request)
    if record.recording is None:
        raise web.HTTPNotFound(text="this call has no recording")
    path = recording_path(state.settings.recordings_dir, record.recording.path)
    if path is None:
        raise web.HTTPNotFound(text="recording file not found")
    return web.FileResponse(path, headers={"Content-Type": _AUDIO_TYPES[record.recording.format]})


def add_routes(app: web.Application) -> None:
    """Register the pages."""
    app.router.add_get("/", live_page)
    app.router.add_get("/calls", history_page)
    app.router.add_get(f"/calls/{CALL_ID}", call_page)
    app.router.add_get(f"/calls/{CALL_ID}/recording", recording)
