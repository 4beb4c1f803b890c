"""``voicestack inference-server``: run the inference server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from worker.config.inference import load_inference_config
from worker.config.loader import ConfigError
from worker.inference.auth import bind_problem
from worker.inference.connection_guard import GuardedSite
from worker.inference.protocol import token_from_env
from worker.inference.runtime import EngineLoadError
from worker.inference.server import InferenceServer, build_app

__all__ = ["register", "serve"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``inference-server`` command."""
    parser = subparsers.add_parser(
        "inference-server",
        help="serve STT, LLM and TTS streams over WebSocket (one process per GPU)",
        description="Load the STT, LLM and TTS models once and serve streams to agent workers.",
    )
    parser.add_argument("--config", default="config/inference.yaml", help="YAML configuration")
    parser.add_argument("--host", help="bind address (overrides the configuration)")
    parser.add_argument("--port", type=int, help="port, 0 for a free one (overrides config)")
    parser.add_argument(
        "--fault-injection",
        action="store_true",
        help="serve POST/DELETE /v1/faults (the reliability test suite only; never in production)",
    )
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    try:
        config, models = load_inference_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    updates = {}
    if args.host is not None:
        updates["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            print(f"error: --port {args.port} is not a port number", file=sys.stderr)
            return 2
        updates["port"] = args.port
    config = config.model_copy(update=updates)
    token = token_from_env()
    problem = bind_problem(config.host, token)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    server = InferenceServer(config, models, fault_injection=args.fault_injection)
    return asyncio.run(serve(server, token))


async def serve(server: InferenceServer, token: str | None = None) -> int:
    """Bind, load the models, and serve until a signal; the exit status is returned."""
    config = server.config
    runner = web.AppRunner(build_app(server, token), handle_signals=False)
    await runner.setup()
    site = GuardedSite(runner, config.host, config.port, server.connection_guard())
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        print(f"error: cannot listen on {config.host}:{config.port}: {err}", file=sys.stderr)
        return 1
    bound = runner.addresses  # the real port when config.port is 0
    port = int(bound[0][1]) if bound else config.port
    log.info("inference server listening on http://%s:%d (loading models)", config.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status = 0
    try:
        loaded = asyncio.create_task(server.engines.wait_loaded())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if loaded in done:
            try:
                loaded.result()
            except EngineLoadError as err:
                print(f"error: {err}", file=sys.stderr)
                status = 1
                stop.set()
            else:
                log.info("models loaded; ready on port %d", port)
        await stop.wait()
        loaded.cancel()
        stopped.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return status
