"""``voicestack agent start``: the livekit-agents worker in production mode.

Production mode (not ``dev``) so that SIGTERM drains: the worker stops taking calls, lets live
calls finish (up to ``drain_timeout_s``), then exits. LiveKit's URL and keys come from the
standard ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` variables or flags.

With a Prometheus port (``worker.prometheus_port`` or ``--prometheus-port``) the worker serves
``/metrics``: livekit-agents' ``lk_agents_*`` and our per-turn ``voicestack_agent_*``
histograms, which job processes record and the main process reads back in multiprocess mode
(:mod:`worker.agent.metrics_export`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from worker.config.agent import AgentConfig, load_agent_config, load_call_flows
from worker.config.loader import ConfigError
from worker.offline import OFFLINE_ENV

if TYPE_CHECKING:
    from livekit.agents import AgentServer

__all__ = ["build_server", "pin_threads_env", "register", "serve"]

logger = logging.getLogger("voicestack.agent")

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "agent.yaml"


def pin_threads_env(env: dict[str, str] | os._Environ[str]) -> None:
    """Thread and preload settings every worker process must inherit (set before forking).

    Two cores are shared by everything: pin OpenMP/BLAS pools to one thread, and skip the
    forkserver's preload of livekit's ~244 MB end-of-turn model, which we do not use (turn
    detection is VAD-based) and which can push job start past its timeout.
    """
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, "1")
    env["LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"] = "0"
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)


def build_server(
    cfg: AgentConfig, *, inference_url: str, prometheus_port: int | None = None
) -> AgentServer:
    """An ``AgentServer`` for our entrypoint, reporting the inference server's load.

    ``prometheus_port`` (0 or None: no metrics endpoint) is served on ``worker.http_host``.
    """
    from livekit.agents import AgentServer, JobExecutorType

    from worker.agent.load import InferenceLoad
    from worker.agent.session import entrypoint, prewarm

    server = AgentServer(
        job_executor_type=JobExecutorType.PROCESS,
        load_fnc=InferenceLoad(
            inference_url,
            timeout=cfg.inference.capacity_timeout_s,
            ceiling=1.0 if cfg.fallback.on_overload == "ring" else LOAD_CEILING,
        ),
        load_threshold=dispatch_threshold(cfg),
        num_idle_processes=cfg.worker.num_idle_processes,
        drain_timeout=cfg.worker.drain_timeout_s,
        initialize_process_timeout=cfg.worker.initialize_process_timeout_s,
        # A call's last step keeps its record: the recording's redaction asks the inference
        # server for word timings (worker.agent.call_recording); 10 s (the default) is tight.
        shutdown_process_timeout=SHUTDOWN_PROCESS_TIMEOUT_S,
        setup_fnc=prewarm,
        host=cfg.worker.http_host,
        port=cfg.worker.http_port,
        prometheus_port=prometheus_port or None,
    )
    server.rtc_session(entrypoint, agent_name=cfg.worker.agent_name)
    return server


SHUTDOWN_PROCESS_TIMEOUT_S = 30.0
"""How long a call's process may take to end after its call (record and recording kept)."""

END_CALLS_TIMEOUT_S = 20.0
"""How long a worker that must exit waits for its jobs to say goodbye and hang up."""

LOAD_CEILING = 0.95
"""The highest load a worker reports unless ``fallback.on_overload`` is ``ring``: below
livekit-server's ``agents.target_load`` (1.0 in livekit-server.yaml), which it must stay under
to be sent a job (docs/livekit.md)."""


def dispatch_threshold(cfg: AgentConfig) -> float:
    """The load above which the worker itself declines calls.

    With ``fallback.on_overload`` ``busy_message`` or ``reject`` the job decides (it reads the
    inference server's capacity and plays the busy message or rejects the call at once), so
    the worker takes every call and reports at most :data:`LOAD_CEILING`: a worker that
    declines, or reports a load at livekit-server's target, leaves the caller ringing until
    the trunk's ringing timeout (measured: 15 s, then livekit-sip answers 486). The reported
    load still steers LiveKit's choice among workers. ``ring`` keeps the refusal at
    ``worker.load_threshold``.
    """
    if cfg.fallback.on_overload == "ring":
        return cfg.worker.load_threshold
    return math.inf


class _Readiness:
    """``GET /readyz``: 200 once the worker is registered with LiveKit and not draining, 503
    before and while draining, and for good once a helper process died; ``GET /healthz``: 200
    while the process serves. The supervisor and tests wait on ``/readyz``: a call placed
    before registration would never be dispatched (self-hosted LiveKit does not retry a
    dispatch that found no worker)."""

    def __init__(self) -> None:
        self.registered = False
        self.draining = False
        self.broken: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/healthz", self._health)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        if self.registered and not self.draining and self.broken is None:
            return web.Response(text="ok")
        state = self.broken or ("draining" if self.draining else "not registered with LiveKit yet")
        return web.Response(status=503, text=state)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


async def serve(
    cfg: AgentConfig,
    *,
    inference_url: str,
    ready_port: int | None = None,
    prometheus_port: int | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain live calls and exit (0 on success).

    With ``ready_port``, a readiness endpoint (see :class:`_Readiness`) listens on 127.0.0.1;
    with ``prometheus_port``, ``/metrics`` listens on ``worker.http_host``.
    """
    from worker.agent.announcements import ensure_rendered
    from worker.agent.watchdog import HelperWatch, JobWatchdog, end_live_calls
    from worker.records.writer import RecordWriter

    # Fallback audio first: no call may be taken without it (it plays when inference cannot).
    await ensure_rendered(cfg, inference_url)
    server = build_server(cfg, inference_url=inference_url, prometheus_port=prometheus_port)
    readiness = _Readiness()
    watchdog = JobWatchdog(cfg.worker.agent_name)
    helpers = HelperWatch()

    def _registered(*_: object) -> None:
        readiness.registered = True
        logger.info("worker registered as %r", cfg.worker.agent_name)
        watchdog.attach(server)
        helpers.snapshot()

    server.on("worker_registered", _registered)
    # The one owner of the records store on this host: the calls' processes spool records,
    # this thread moves them to the store whenever it is reachable, and runs retention.
    records = cfg.records.resolved(os.environ)
    writer = RecordWriter(records) if records.enabled else None
    if writer is not None:
        writer.start()
    runner: web.AppRunner | None = None
    if ready_port is not None:
        runner = web.AppRunner(readiness.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ready_port).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run_task = asyncio.create_task(server.run(devmode=False), name="agent-server")
    stop_task = asyncio.create_task(stop.wait(), name="agent-stop")
    helper_task = asyncio.create_task(helpers.wait_lost(), name="agent-helpers")
    status = 0
    try:
        done, _ = await asyncio.wait(
            {run_task, stop_task, helper_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if run_task in done:
            err = run_task.exception()
            logger.error("agent worker stopped: %s", err or "run() returned")
            return 1
        if helper_task in done:
            # Without its forkserver or resource tracker the worker cannot start the next
            # call's process: report unready, end the live calls with a goodbye (their jobs
            # cannot outlive the worker) and exit so that the supervisor restarts it.
            readiness.broken = helper_task.result()
            logger.critical("%s: the worker stops to be restarted", readiness.broken)
            await end_live_calls(server, watchdog, timeout_s=END_CALLS_TIMEOUT_S)
            return 1
        readiness.draining = True
        logger.info("signal received: draining live calls (up to %ss)", cfg.worker.drain_timeout_s)
        try:
            await server.drain(timeout=cfg.worker.drain_timeout_s)
        except TimeoutError:
            logger.warning("drain timed out; closing with calls still live")
            status = 1
    finally:
        stop_task.cancel()
        helper_task.cancel()
        await watchdog.aclose()
        await server.aclose()
        if not run_task.done():
            run_task.cancel()
        await asyncio.gather(run_task, stop_task, helper_task, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        if writer is not None:
            await asyncio.to_thread(writer.stop)
    return status


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        cfg = load_agent_config(args.config)
        load_call_flows(cfg, args.config)  # a bad flows file fails here, not in every call
        cfg.records.resolved(os.environ)  # ... and a bad VOICESTACK_RECORDS_URL
    except (ConfigError, ValueError) as err:
        logger.error("%s", err)
        return 2
    prometheus_port = cfg.worker.prometheus_port
    if args.prometheus_port is not None:
        if not 0 <= args.prometheus_port <= 65535:
            logger.error("--prometheus-port %s is not a port number", args.prometheus_port)
            return 2
        prometheus_port = args.prometheus_port
    metrics_dir: str | None = None
    if prometheus_port:
        # Before livekit-agents is imported (worker.agent.session below imports it).
        from worker.agent.metrics_export import enable_multiprocess

        path, created = enable_multiprocess()
        metrics_dir = path if created else None
    try:
        return _start(args, cfg, prometheus_port or None)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _start(args: argparse.Namespace, cfg: AgentConfig, prometheus_port: int | None) -> int:
    from worker.agent.session import CONFIG_ENV, INFERENCE_URL_ENV

    for flag, env in (
        ("url", "LIVEKIT_URL"),
        ("api_key", "LIVEKIT_API_KEY"),
        ("api_secret", "LIVEKIT_API_SECRET"),
    ):
        value = getattr(args, flag)
        if value:
            os.environ[env] = value
    missing = [
        e for e in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not os.environ.get(e)
    ]
    if missing:
        logger.error(
            "missing LiveKit settings: %s (flags --url/--api-key/--api-secret)", ", ".join(missing)
        )
        return 2
    inference_url = args.inference_url or cfg.inference.url
    if args.ready_port is not None and not 0 < args.ready_port <= 65535:
        logger.error("--ready-port %s is not a port number", args.ready_port)
        return 2
    # Job processes read these (they are forked after this point).
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    os.environ[INFERENCE_URL_ENV] = inference_url
    pin_threads_env(os.environ)
    return asyncio.run(
        serve(
            cfg,
            inference_url=inference_url,
            ready_port=args.ready_port,
            prometheus_port=prometheus_port,
        )
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``voicestack agent start``."""
    agent = subparsers.add_parser("agent", help="the voice agent worker (livekit-agents)")
    sub = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="run the worker; SIGTERM drains live calls")
    start.add_argument("--config", default=str(DEFAULT_CONFIG), help="agent config (YAML)")
    start.add_argument("--inference-url", default="", help="inference server, http://HOST:PORT")
    start.add_argument("--url", default="", help="LiveKit server URL (or LIVEKIT_URL)")
    start.add_argument("--api-key", default="", help="LiveKit API key (or LIVEKIT_API_KEY)")
    start.add_argument(
        "--api-secret", default="", help="LiveKit API secret (or LIVEKIT_API_SECRET)"
    )
    start.add_argument(
        "--ready-port",
        type=int,
        default=None,
        help="serve GET /readyz (200 once registered with LiveKit) on 127.0.0.1:PORT",
    )
    start.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on worker.http_host:PORT (0: off); "
        "overrides worker.prometheus_port",
    )
    start.set_defaults(func=_cmd_start)
    # `voicestack up --components ...,inference,agent` learns about our processes here.
    from worker.agent.components import register_components

    register_components()
