"""Run an inference server on its own event loop in a background thread.

For tests and tools that need a real server in-process (e.g. agent plugin tests): the server
binds a free port on 127.0.0.1 by default and is ready (models loaded) when the context opens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference.connection_guard import GuardedSite
from worker.inference.server import InferenceServer, build_app

__all__ = ["RunningServer", "serve_in_thread"]


@dataclass(frozen=True)
class RunningServer:
    """A started server: its base URL and the server object (for state checks in tests)."""

    url: str
    server: InferenceServer
    request_stop: Callable[[], None]
    """Begin a graceful shutdown without waiting for it (the context exit waits)."""

    @property
    def ws_url(self) -> str:
        return self.url + "/v1/stream"


@contextmanager
def serve_in_thread(
    config: InferenceConfig, models: ResolvedModels, *, start_timeout: float = 120.0
) -> Iterator[RunningServer]:
    """Start the server (host/port from ``config``; port 0 picks a free one), wait until every
    model is loaded, yield it, then shut it down. Raises RuntimeError if it cannot start."""
    server = InferenceServer(config, models)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    address: list[str] = []
    stop = asyncio.Event()

    async def main() -> None:
        runner = web.AppRunner(build_app(server), handle_signals=False)
        await runner.setup()
        try:
            await GuardedSite(runner, config.host, config.port, server.connection_guard()).start()
            host, port = runner.addresses[0][:2]
            address.append(f"http://{host}:{port}")
            await server.engines.wait_loaded()
        except Exception as err:
            failure.append(err)
        finally:
            started.set()
        try:
            if not failure:
                await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def request_stop() -> None:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:
            pass  # the loop already finished: nothing left to stop

    thread = threading.Thread(target=run, name="inference-server", daemon=True)
    thread.start()
    try:
        if not started.wait(start_timeout):
            raise RuntimeError(f"inference server did not start within {start_timeout:g} s")
        if failure:
            raise RuntimeError(f"inference server failed to start: {failure[0]}") from failure[0]
        yield RunningServer(address[0], server, request_stop)
    finally:
        request_stop()
        thread.join(30)
