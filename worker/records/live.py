"""Live call events over the stack's Redis: agents publish, consoles watch and send commands.

Agent side, one :class:`LivePublisher` per job process: :meth:`LivePublisher.publish` never
blocks and never raises, so a call never waits on Redis (a Redis outage costs events, not
calls). It also keeps a JSON snapshot of each live call in the ``LIVE_CALLS_KEY`` hash, so a
console that starts mid-call sees it: the fields of ``call_started`` and ``state``, the texts
of ``interim`` and ``agent_partial`` under those names, and ``updated``, which it rewrites
every ``HEARTBEAT_S``: a console treats an entry older than ``STALE_AFTER_S`` as gone (its job
process died without saying ``call_ended``).

Console side, :class:`LiveFeed`: the snapshot, a subscription to the events (bounded per
subscriber: a slow reader loses events, never stalls the others) and :meth:`LiveFeed.command`,
which asks the agent that runs a call to end or transfer it and waits for its answer.

Messages are JSON objects ``{"type", "call_id", "at": epoch seconds, ...fields}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "COMMAND_CHANNEL",
    "HEARTBEAT_S",
    "LIVE_CALLS_KEY",
    "LIVE_CHANNEL",
    "STALE_AFTER_S",
    "CommandHandler",
    "LiveFeed",
    "LivePublisher",
]

LIVE_CHANNEL = "voicestack:live"
"""Pub/sub channel: agents -> consoles."""
LIVE_CALLS_KEY = "voicestack:live:calls"
"""Hash: call_id -> JSON snapshot of each live call."""
COMMAND_CHANNEL = "voicestack:commands"
"""Pub/sub channel: consoles -> agents."""
HEARTBEAT_S = 10.0
"""How often a publisher rewrites the ``updated`` time of its live calls' snapshots."""
STALE_AFTER_S = 30.0
"""A snapshot not updated for this long belongs to a call whose agent is gone."""

CommandHandler = Callable[[dict[str, Any]], Awaitable[tuple[bool, str]]]

# Event types whose fields are merged into the live call's snapshot.
_SNAPSHOT_TYPES = frozenset({"call_started", "state", "interim", "agent_partial"})
# ... of which these keep their "text" under their own type's name in the snapshot.
_TEXT_TYPES = frozenset({"interim", "agent_partial"})
_BATCH = 64
_BACKOFF_MIN_S = 0.25
_BACKOFF_MAX_S = 5.0
_HANDLER_TIMEOUT_S = 10.0
_SOCKET_TIMEOUT_S = 3.0
_SUBSCRIBER_QUEUE = 256

logger = logging.getLogger(__name__)


def _client(url: str) -> aioredis.Redis:
    # Short socket deadlines and no client-side retries: the loops below own retrying, with
    # backoff, so that a dead Redis is noticed in seconds.
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=_SOCKET_TIMEOUT_S,
        socket_timeout=_SOCKET_TIMEOUT_S,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=15,
        decode_responses=True,
    )
    return client


def _decode(data: object) -> dict[str, Any] | None:
    """A message's JSON object, or None for anything else."""
    if not isinstance(data, str | bytes):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _close_client(client: aioredis.Redis | None) -> None:
    if client is None:
        return
    with contextlib.suppress(RedisError, OSError):
        await asyncio.wait_for(client.aclose(), 1.0)


async def _follow(
    url: str,
    channel: str,
    what: str,
    deliver: Callable[[dict[str, Any]], None],
    closed: Callable[[], bool],
    subscribed: asyncio.Event | None = None,
) -> None:
    """Subscribe to ``channel`` and hand each JSON object published there to ``deliver``
    until ``closed()``; a lost connection is retried with backoff, one warning per outage.
    ``subscribed`` is set while the subscription stands."""
    outage = _Outage(what)
    while not closed():
        client = _client(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await asyncio.wait_for(pubsub.subscribe(channel), _SOCKET_TIMEOUT_S)
            if subscribed is not None:
                subscribed.set()
            outage.ok()
            while not closed():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    event = _decode(message.get("data"))
                    if event is not None:
                        deliver(event)
        except (RedisError, OSError, TimeoutError) as err:
            if subscribed is not None:
                subscribed.clear()
            await asyncio.sleep(outage.failed(err))
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(pubsub.aclose(), 1.0)
            await _close_client(client)


class _Outage:
    """One warning per outage, and the backoff between tries."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.down = False
        self.delay = _BACKOFF_MIN_S

    def failed(self, err: BaseException) -> float:
        if not self.down:
            logger.warning("%s: Redis unavailable (%s); retrying with backoff", self._what, err)
            self.down = True
        delay = self.delay
        self.delay = min(_BACKOFF_MAX_S, self.delay * 2)
        return delay

    def ok(self) -> None:
        if self.down:
            logger.info("%s: Redis reachable again", self._what)
        self.down = False
        self.delay = _BACKOFF_MIN_S


class LivePublisher:
    """The agent's end of the bus (one per job process; use it on the job's event loop)."""

    def __init__(self, redis_url: str, *, max_pending: int = 256) -> None:
        self._url = redis_url
        self._max_pending = max(1, max_pending)
        self._pending: deque[dict[str, Any]] = deque()
        self._live: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._handlers: dict[str, CommandHandler] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: aioredis.Redis | None = None
        self._sender: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.dropped = 0
        """Events dropped because the queue was full (Redis slow or down)."""

    # -- publishing -------------------------------------------------------------------------

    def publish(self, call_id: str, type: str, **fields: object) -> None:
        """Queue one event for the consoles; never blocks, never raises."""
        try:
            self._publish(call_id, type, fields)
        except Exception:  # a console feature must never break a call
            logger.exception("live event %r of call %s not queued", type, call_id)

    def _publish(self, call_id: str, type: str, fields: dict[str, object]) -> None:
        if self._closed:
            return
        now = time.time()
        message: dict[str, Any] = {**fields, "type": type, "call_id": call_id, "at": now}
        if type in _SNAPSHOT_TYPES:
            snap = self._live.setdefault(call_id, {"call_id": call_id})
            if type in _TEXT_TYPES:
                snap[type] = fields.get("text", "")  # both carry "text": keep them apart
            else:
                snap.update(fields)
            snap["updated"] = now
            self._dirty.add(call_id)
            self._removed.discard(call_id)
        elif type == "call_ended":
            self._live.pop(call_id, None)
            self._dirty.discard(call_id)
            self._removed.add(call_id)
            self._handlers.pop(call_id, None)
        self._pending.append(message)
        while len(self._pending) > self._max_pending:
            self._pending.popleft()  # the oldest goes: the console wants what is happening now
            self.dropped += 1
        self._idle.clear()
        self._wake.set()
        self._ensure_sender()

    def _ensure_sender(self) -> None:
        if self._sender is not None and not self._sender.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next publish on the loop starts it
        self._sender = loop.create_task(self._send_loop(), name="live-publisher")

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = _client(self._url)
        return self._client

    async def _send_loop(self) -> None:
        outage = _Outage("live events")
        next_beat = time.monotonic() + HEARTBEAT_S
        while True:
            if not self._has_work():
                self._idle.set()
                self._wake.clear()
                timeout = max(0.0, next_beat - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            if time.monotonic() >= next_beat:
                now = time.time()
                for call_id, snap in self._live.items():
                    snap["updated"] = now
                    self._dirty.add(call_id)
                next_beat = time.monotonic() + HEARTBEAT_S
            if not self._has_work():
                continue
            batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
            dirty, removed = set(self._dirty), set(self._removed)
            self._dirty.clear()
            self._removed.clear()
            try:
                await self._write(batch, dirty, removed)
            except (RedisError, OSError, TimeoutError) as err:
                self._requeue(batch, dirty, removed)
                await _close_client(self._client)
                self._client = None
                await asyncio.sleep(outage.failed(err))
            else:
                outage.ok()

    def _has_work(self) -> bool:
        return bool(self._pending or self._dirty or self._removed)

    def _requeue(self, batch: list[dict[str, Any]], dirty: set[str], removed: set[str]) -> None:
        merged = batch + list(self._pending)
        overflow = max(0, len(merged) - self._max_pending)
        self.dropped += overflow
        self._pending = deque(merged[overflow:])
        # A call that ended meanwhile must not have its snapshot written back.
        self._dirty |= {c for c in dirty if c in self._live}
        self._removed |= removed - set(self._live)

    async def _write(self, batch: list[dict[str, Any]], dirty: set[str], removed: set[str]) -> None:
        pipe = self._redis().pipeline(transaction=False)
        for call_id in dirty:
            if call_id in self._live:
                pipe.hset(LIVE_CALLS_KEY, call_id, json.dumps(self._live[call_id], default=str))
        if removed:
            pipe.hdel(LIVE_CALLS_KEY, *removed)
        for message in batch:
            pipe.publish(LIVE_CHANNEL, json.dumps(message, default=str))
        await asyncio.wait_for(pipe.execute(), _SOCKET_TIMEOUT_S * 2)

    # -- commands ---------------------------------------------------------------------------

    def on_command(self, call_id: str, handler: CommandHandler) -> None:
        """Send the consoles' commands for ``call_id`` to ``handler``; its ``(ok, detail)`` is
        published back as ``command_result``. Dropped when the call's ``call_ended`` is
        published."""
        self._handlers[call_id] = handler
        if self._listener is None or self._listener.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                logger.warning("on_command outside an event loop: commands are not received")
                return
            self._listener = loop.create_task(
                _follow(
                    self._url,
                    COMMAND_CHANNEL,
                    "live commands",
                    self._dispatch,
                    lambda: self._closed,
                ),
                name="live-commands",
            )

    def _dispatch(self, command: dict[str, Any]) -> None:
        handler = self._handlers.get(str(command.get("call_id")))
        if handler is None:
            return  # another job process runs that call
        task = asyncio.get_running_loop().create_task(self._run_handler(handler, command))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _run_handler(self, handler: CommandHandler, command: dict[str, Any]) -> None:
        try:
            ok, detail = await asyncio.wait_for(handler(command), _HANDLER_TIMEOUT_S)
        except TimeoutError:
            ok, detail = False, "the agent did not finish the command in time"
        except Exception as err:
            logger.exception("command %r failed", command.get("action"))
            ok, detail = False, f"the agent failed: {type(err).__name__}"
        self.publish(
            str(command.get("call_id")),
            "command_result",
            id=command.get("id"),
            ok=ok,
            detail=detail,
        )

    async def aclose(self) -> None:
        """Send what is pending (for at most 1 s), then stop and close the connection."""
        if self._closed:
            return
        self._ensure_sender()
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
        self._closed = True
        tasks = [t for t in (self._sender, self._listener, *self._handler_tasks) if t]
        for task in tasks:
            task.cancel()
        # gather, not a suppressed await: a cancellation of aclose's caller still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_client(self._client)
        self._client = None
        if self._pending:
            logger.info("live events: %d not sent at close", len(self._pending))


class LiveFeed:
    """The console's end of the bus."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._client: aioredis.Redis | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._results: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closed = False
        self.dropped = 0
        """Events dropped for subscribers that read too slowly."""

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = _client(self._url)
        return self._client

    async def snapshot(self) -> list[dict[str, Any]]:
        """The live calls (fresh snapshots only), oldest first. Raises ``RedisError`` or
        ``OSError`` when Redis is unreachable."""
        raw = await asyncio.wait_for(self._redis().hgetall(LIVE_CALLS_KEY), _SOCKET_TIMEOUT_S)
        now = time.time()
        calls, dead = [], []
        for call_id, data in raw.items():
            snap = _decode(data)
            updated = snap.get("updated") if snap else None
            if snap is None or not isinstance(updated, int | float):
                dead.append(call_id)
            elif now - updated <= STALE_AFTER_S:
                calls.append(snap)
            elif now - updated > 4 * STALE_AFTER_S:
                dead.append(call_id)  # long gone: keep the hash from growing
        if dead:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._redis().hdel(LIVE_CALLS_KEY, *dead), 1.0)
        calls.sort(key=lambda s: (str(s.get("started_at", "")), s.get("call_id", "")))
        return calls

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """The events as published, until the caller stops iterating. Each subscriber has its
        own bounded queue: when it falls behind, its oldest events are dropped."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        self._ensure_reader()
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    async def command(
        self, call_id: str, action: str, *, target: str | None, by: str, timeout_s: float = 5.0
    ) -> tuple[bool, str]:
        """Ask the agent running ``call_id`` to ``action`` it and wait for its answer:
        ``(False, "no agent answered")`` when none does within ``timeout_s``."""
        command_id = uuid.uuid4().hex
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._results[command_id] = future
        deadline = time.monotonic() + timeout_s
        try:
            self._ensure_reader()
            # The answer may come fast: listen before asking.
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
            body: dict[str, str | None] = {"id": command_id, "call_id": call_id, "action": action}
            body |= {"target": target, "by": by}
            left = max(0.1, deadline - time.monotonic())
            receivers = await asyncio.wait_for(
                self._redis().publish(COMMAND_CHANNEL, json.dumps(body)), left
            )
            if not receivers:
                return False, "no agent answered"
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False, "no agent answered"
        except (RedisError, OSError) as err:
            return False, f"live feed unavailable: {err}"
        finally:
            self._results.pop(command_id, None)

    def _ensure_reader(self) -> None:
        if self._closed:
            raise RuntimeError("LiveFeed is closed")
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                _follow(
                    self._url,
                    LIVE_CHANNEL,
                    "live feed",
                    self._deliver,
                    lambda: self._closed,
                    self._subscribed,
                ),
                name="live-feed",
            )

    def _deliver(self, event: dict[str, Any]) -> None:
        if event.get("type") == "command_result":
            future = self._results.get(str(event.get("id")))
            if future is not None and not future.done():
                future.set_result((bool(event.get("ok")), str(event.get("detail", ""))))
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    async def aclose(self) -> None:
        """Stop reading and close the connections."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await _close_client(self._client)
        self._client = None
