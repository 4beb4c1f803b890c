"""Helpers of the console tests: a real redis-server, an event loop in a thread, settings and
sample call records."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis

from worker.console.app import ConsoleSettings
from worker.records.record import CallEvent, CallRecord, Turn
from worker.stack.ports import free_port

PASSWORD = "correct horse battery staple"
T = TypeVar("T")


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def dead_redis_url() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


class LoopThread:
    """An asyncio loop in a daemon thread, for code that must run beside synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and wait (at most ``timeout``) for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Call ``fn`` on the loop (fire and forget)."""
        self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def settings(tmp_path: Path, redis_url: str, **overrides: Any) -> ConsoleSettings:
    """Console settings over a temp SQLite store and recordings directory."""
    recordings = tmp_path / "audio"
    recordings.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "password": PASSWORD,
        "api_token": "api-token-0123456789",
        "redis_url": redis_url,
        "store_url": f"sqlite:///{tmp_path / 'records.db'}",
        "recordings_dir": recordings,
        "inference_url": f"http://127.0.0.1:{free_port()}",
        "transfer_targets": {"sales": "sip:sales@pbx.example", "support": "sip:2000@pbx.example"},
        "capacity_timeout_s": 0.5,
        "command_timeout_s": 2.0,
    }
    values.update(overrides)
    return ConsoleSettings(**values)


def sample_record(call_id: str, *, caller: str = "***1234", text: str = "") -> CallRecord:
    """A finished call with two exchanges, latencies and an event."""
    started = datetime.now(UTC) - timedelta(minutes=2)
    latency = {"end_of_utterance": 0.21, "stt": 0.04, "llm_ttft": 0.15, "tts_ttfb": 0.06}
    return CallRecord(
        call_id=call_id,
        started_at=started,
        ended_at=started + timedelta(seconds=42),
        called="+15550100",
        caller=caller,
        flow="support",
        outcome="completed",
        ended_by="caller",
        turns=(
            Turn(role="agent", text="Hello, how can I help?", at_s=1.0),
            Turn(role="caller", text=text or "Where is my order?", at_s=4.5),
            Turn(
                role="agent",
                text="Let me check that for you.",
                at_s=5.2,
                latency=latency | {"e2e": 0.48},
            ),
            Turn(role="caller", text="Thanks, bye.", at_s=9.0),
            Turn(
                role="agent",
                text="Goodbye!",
                at_s=9.6,
                latency=latency | {"llm_ttft": 0.3, "e2e": 0.62},
            ),
        ),
        events=(CallEvent(kind="hang_up", at_s=41.0, detail={"by": "caller"}),),
    )
