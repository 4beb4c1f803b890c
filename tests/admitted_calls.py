"""Admit calls on a test inference server before the streams under test start.

Admission judges a new call on the engines' measured load (docs/scheduler.md), so a call opened
while its neighbours' work runs may be refused on a slow machine: a CI box refused the fourth of
four concurrent calls at 86 % projected LLM load. In production a call's first stream (its STT)
admits it and its later LLM and TTS streams are never judged again; tests about batching,
cancellation or completion do the same here: wait until the engines are idle, then hold each
call with an idle stream while the test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from worker.inference.background import RunningServer
from worker.inference.scheduler import SchedulingConfig

__all__ = ["admits_when_idle", "admitted_calls"]


def admits_when_idle(llm: dict[str, Any], **admission: Any) -> SchedulingConfig:
    """Deadline scheduling for a server used with :func:`admitted_calls`: tiny per-call priors
    and 0.2 s load windows, so calls are admitted as soon as the engines are idle. ``llm``:
    the LLM scheduler's settings; ``admission``: e.g. ``max_calls``."""
    priors = {f"{e}_units_per_call_s": 0.01 for e in ("stt", "llm", "tts")}
    return SchedulingConfig.model_validate(
        {
            "mode": "deadline",
            "admission": {**priors, **admission},
            "stt": {"load_window_s": 0.2},
            "llm": {**llm, "load_window_s": 0.2},
            "tts": {"load_window_s": 0.2},
        }
    )


async def _wait_engines_idle(s: aiohttp.ClientSession, server: RunningServer) -> None:
    while True:
        async with s.get(server.url + "/v1/capacity") as r:
            engines = (await r.json())["engines"]
        if all(e.get("utilization", 0.0) < 0.01 for e in engines.values()):
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def admitted_calls(
    server: RunningServer, calls: list[str], timeout_s: float = 90
) -> AsyncIterator[None]:
    """Admit ``calls`` (failing with the refusal's reason if one is refused) and hold them
    until the block ends. Meant for servers with a short ``load_window_s``."""
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(timeout_s):
            await _wait_engines_idle(s, server)
        holders = []
        try:
            for i, call in enumerate(calls):
                ws = await s.ws_connect(server.ws_url)
                holders.append(ws)
                # Idle streams hold their call; alternate ops to stay within per-op limits.
                await ws.send_json({"op": ("tts", "stt")[i % 2], "call_id": call})
            async with asyncio.timeout(timeout_s):
                for call, ws in zip(calls, holders, strict=True):
                    while not server.server.engines.has_call(call):
                        try:  # a refused holder gets an error frame: fail with its reason
                            msg = await ws.receive(timeout=0.02)
                        except TimeoutError:
                            continue
                        raise AssertionError(f"holder of {call} refused: {msg.data!r}")
            yield
        finally:
            for ws in holders:
                await ws.close()
