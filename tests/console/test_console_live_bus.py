"""The live-event bus (worker/records/live.py) against a real redis-server, and without one."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from console_support import dead_redis_url

from worker.records import live
from worker.records.live import LIVE_CALLS_KEY, LIVE_CHANNEL, LiveFeed, LivePublisher

pytestmark = pytest.mark.integration


def _id() -> str:
    return "call-" + uuid.uuid4().hex[:8]


async def _until(check: Any, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_publisher_never_blocks_or_raises_with_redis_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.records.live")
    publisher = LivePublisher(dead_redis_url(), max_pending=256)
    started = time.perf_counter()
    for i in range(1000):
        publisher.publish("c1", "interim", text=f"word {i}")
    publisher.publish("c1", "bad", value=object())  # unserialisable: still no exception
    assert time.perf_counter() - started < 0.5  # never waits on Redis
    assert publisher.dropped == 1001 - 256  # the queue is bounded
    await asyncio.sleep(0.8)  # a few failed sends with backoff
    publisher.publish("c1", "state", state="listening")
    closing = time.perf_counter()
    await publisher.aclose()
    assert time.perf_counter() - closing < 2.0  # the flush deadline holds
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1  # one warning per outage, not per try


async def test_full_queue_drops_the_oldest_events(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(LIVE_CHANNEL)
    publisher = LivePublisher(redis_url, max_pending=5)
    call_id = _id()
    for i in range(20):  # no await in between: the sender cannot run, the queue overflows
        publisher.publish(call_id, "interim", text=str(i))
    got: list[str] = []
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.5)
        if message:
            got.append(json.loads(message["data"])["text"])
    assert got == ["15", "16", "17", "18", "19"]
    assert publisher.dropped == 15
    await publisher.aclose()
    await pubsub.aclose()
    await client.aclose()


async def test_snapshot_merges_live_fields_and_forgets_ended_calls(redis_url: str) -> None:
    publisher = LivePublisher(redis_url)
    feed = LiveFeed(redis_url)
    call_id = _id()
    publisher.publish(call_id, "call_started", caller="***1234", flow="support", started_at="x")
    publisher.publish(call_id, "state", state="listening")
    publisher.publish(call_id, "interim", text="where is my")
    publisher.publish(call_id, "agent_partial", text="Let me")
    publisher.publish(call_id, "caller_turn", text="where is my order", at_s=3.0)

    async def merged() -> bool:
        snaps = {s["call_id"]: s for s in await feed.snapshot()}
        snap = snaps.get(call_id, {})
        return snap.get("interim") == "where is my" and snap.get("agent_partial") == "Let me"

    await _until(merged)
    snap = {s["call_id"]: s for s in await feed.snapshot()}[call_id]
    assert snap["caller"] == "***1234" and snap["state"] == "listening"
    assert "text" not in snap and "at_s" not in snap  # caller_turn is not merged
    publisher.publish(call_id, "call_ended", outcome="completed", ended_by="caller")

    async def gone() -> bool:
        return call_id not in {s["call_id"] for s in await feed.snapshot()}

    await _until(gone)
    await publisher.aclose()
    await feed.aclose()


async def test_snapshot_returns_fresh_entries_only(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    now = time.time()
    fresh, stale, dead = _id(), _id(), _id()
    await client.hset(
        LIVE_CALLS_KEY,
        mapping={
            fresh: json.dumps({"call_id": fresh, "updated": now - 5}),
            stale: json.dumps({"call_id": stale, "updated": now - 31}),
            dead: json.dumps({"call_id": dead, "updated": now - 600}),
            "junk": "not json",
        },
    )
    feed = LiveFeed(redis_url)
    ids = {s["call_id"] for s in await feed.snapshot()}
    assert fresh in ids and stale not in ids and dead not in ids
    left = await client.hkeys(LIVE_CALLS_KEY)
    assert stale in left  # maybe a Redis hiccup of its agent: kept a while
    assert dead not in left and "junk" not in left  # long gone: removed
    await client.hdel(LIVE_CALLS_KEY, fresh, stale)
    await feed.aclose()
    await client.aclose()


async def test_publisher_refreshes_live_snapshots(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.2)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    publisher = LivePublisher(redis_url)
    call_id = _id()
    publisher.publish(call_id, "call_started", caller="***1")

    async def stored() -> float:
        raw = await client.hget(LIVE_CALLS_KEY, call_id)
        return float(json.loads(raw)["updated"]) if raw else 0.0

    await _until(lambda: _positive(stored()))
    first = await stored()
    await asyncio.sleep(0.6)
    assert await stored() > first  # rewritten without any new event
    publisher.publish(call_id, "call_ended", outcome="completed")
    await publisher.aclose()
    await client.aclose()


async def _positive(value: Any) -> bool:
    return bool(await value > 0)


async def test_commands_reach_the_calls_agent_and_answers_come_back(redis_url: str) -> None:
    publisher = LivePublisher(redis_url)
    feed = LiveFeed(redis_url)
    call_id = _id()
    seen: list[dict[str, Any]] = []

    async def handler(command: dict[str, Any]) -> tuple[bool, str]:
        seen.append(command)
        return True, f"{command['action']} done"

    publisher.on_command(call_id, handler)
    await asyncio.sleep(0.3)  # the listener subscribes
    ok, detail = await feed.command(call_id, "end", target=None, by="alice", timeout_s=3)
    assert (ok, detail) == (True, "end done")
    assert seen[0]["by"] == "alice" and seen[0]["action"] == "end" and seen[0]["id"]
    # Another call: the agent ignores it, nobody answers.
    started = time.monotonic()
    ok, detail = await feed.command(_id(), "end", target=None, by="alice", timeout_s=0.5)
    assert (ok, detail) == (False, "no agent answered")
    assert time.monotonic() - started < 2
    await publisher.aclose()
    # No agent subscribed at all: answered at once.
    ok, detail = await feed.command(call_id, "end", target=None, by="alice", timeout_s=3)
    assert (ok, detail) == (False, "no agent answered")
    await feed.aclose()


async def test_a_slow_subscriber_loses_events_not_the_feed(redis_url: str) -> None:
    feed = LiveFeed(redis_url)
    publisher = LivePublisher(redis_url, max_pending=2000)
    slow = feed.subscribe()
    fast = feed.subscribe()
    first = asyncio.ensure_future(anext(slow))
    got_fast = asyncio.ensure_future(anext(fast))
    await asyncio.sleep(0.3)  # both subscribed
    call_id = _id()
    for i in range(600):
        publisher.publish(call_id, "interim", text=str(i))
    assert (await asyncio.wait_for(first, 5))["text"] == "0"
    await asyncio.wait_for(got_fast, 5)
    await asyncio.sleep(1.0)  # everything delivered; the slow one read only one event
    assert feed.dropped > 0
    last = None
    for _ in range(256):
        last = await asyncio.wait_for(anext(slow), 1)
    assert last is not None and last["text"] == "599"  # it kept the newest events
    await slow.aclose()
    await fast.aclose()
    await publisher.aclose()
    await feed.aclose()
