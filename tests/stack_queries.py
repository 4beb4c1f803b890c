"""Queries of a running stack shared by the e2e and fault suites: poll until a condition
holds, the inference server's capacity, and which rooms still hold an agent."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from livekit import api

__all__ = ["agent_rooms", "capacity", "wait_until"]


def wait_until(
    check: Callable[[], bool], *, limit_s: float, what: str, every_s: float = 0.25
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # a transient API error is retried until the deadline
            last_error = err
        time.sleep(every_s)
    raise AssertionError(
        f"timed out after {limit_s}s waiting for: {what} (last error: {last_error})"
    )


def capacity(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/v1/capacity", timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def agent_rooms(stack: Any) -> list[str]:
    """Rooms in which an agent participant is still present (``stack.livekit`` is a
    :class:`~worker.stack.loopback.LoopbackStack`)."""
    lk = stack.livekit

    async def query() -> list[str]:
        async with api.LiveKitAPI(lk.livekit_url, lk.api_key, lk.api_secret) as client:
            rooms = await client.room.list_rooms(api.ListRoomsRequest())
            busy = []
            for room in rooms.rooms:
                parts = await client.room.list_participants(
                    api.ListParticipantsRequest(room=room.name)
                )
                if any(p.kind == api.ParticipantInfo.Kind.AGENT for p in parts.participants):
                    busy.append(room.name)
            return busy

    return asyncio.run(query())


def room_names(lk: Any) -> set[str]:
    """Names of the rooms LiveKit has now (``lk`` is a LoopbackStack)."""

    async def query() -> set[str]:
        async with api.LiveKitAPI(lk.livekit_url, lk.api_key, lk.api_secret) as client:
            rooms = await client.room.list_rooms(api.ListRoomsRequest())
            return {room.name for room in rooms.rooms}

    return asyncio.run(query())
