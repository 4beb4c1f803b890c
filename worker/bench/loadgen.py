"""Run one benchmark point: N synthetic calls at once against a running inference server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp

from worker.bench.call import CallSettings, run_call
from worker.bench.results import PointResult, TurnRecord
from worker.bench.timeline import CallPlan
from worker.bench.utterances import Utterance

__all__ = ["run_point", "wait_idle"]


async def run_point(
    *,
    mode: str,
    plans: Sequence[CallPlan],
    utterances: Sequence[Utterance],
    settings: CallSettings,
    max_duration_s: float,
    limit_ms: float,
    call_prefix: str = "bench",
) -> PointResult:
    """Run every planned call concurrently and collect their turns.

    Calls start at their planned offsets; no turn starts later than ``max_duration_s`` after
    the point began, and a turn in progress then is bounded by ``settings.turn_timeout_s``.
    """
    records: list[TurnRecord] = []
    # Each call holds at most three streams at once (STT, LLM, TTS): size the pool for that.
    connector = aiohttp.TCPConnector(limit=3 * len(plans) + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        deadline = start + max_duration_s
        async with asyncio.TaskGroup() as tg:
            for plan in plans:
                tg.create_task(
                    run_call(
                        session,
                        plan,
                        utterances,
                        settings,
                        start_at=start + plan.start_offset_s,
                        deadline=deadline,
                        sink=records,
                        call_prefix=call_prefix,
                    )
                )
        wall = time.monotonic() - start
    records.sort(key=lambda r: (r.call_index, r.turn_index))
    return PointResult(mode=mode, n_calls=len(plans), wall_s=wall, turns=records, limit_ms=limit_ms)


async def wait_idle(base_url: str, timeout_s: float = 15.0) -> bool:
    """Poll ``GET /v1/capacity`` until the server reports no active stream.

    Between points this shows that the previous point's closed streams were freed on the
    server (cancellation reached the engines); returns ``False`` if they were not within
    ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base_url}/v1/capacity") as resp:
                    body = await resp.json()
                active = body.get("active_streams", {})
                if resp.status == 200 and not any(int(v) for v in active.values()):
                    return True
            except (aiohttp.ClientError, ValueError, TypeError, AttributeError):
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
