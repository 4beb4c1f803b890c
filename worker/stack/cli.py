"""``voicestack up``: check the configs, render them into a run directory, start and supervise
the stack until Ctrl-C/SIGTERM, then stop everything in reverse order and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

from worker.config.loader import ConfigError
from worker.stack.plan import COMPONENT_BUILDERS, CORE_COMPONENTS, PlanError, build_plan
from worker.stack.render import RenderedStack, RunFiles, project_root, write_run_files
from worker.stack.supervisor import StartError, Supervisor
from worker.telephony.cli import add_common_arguments, run_checks

__all__ = ["register", "run_up"]


def _say(line: str) -> None:
    print(f"[up] {line}", flush=True)


def _status_lines(stack: RenderedStack, files: RunFiles, sup: Supervisor) -> list[str]:
    lines = [f"{s.name:<10} {s.state.value:<9} pid {s.pid}  log {s.log_path}" for s in sup.status()]
    names = {s.name for s in sup.status()}
    lines.append(f"LiveKit API  {stack.livekit_url}  (ws: {stack.ws_url})")
    if "sip" in names:
        host, port = stack.sip_address
        lines.append(f"Call SIP     sip:<number>@{host}:{port}  (UDP/TCP)")
    if files.credentials is not None:
        lines.append(f"Credentials  {files.credentials}  (this run's generated key pair)")
    else:
        lines.append("Credentials  LIVEKIT_API_KEY/LIVEKIT_API_SECRET from your environment")
    return lines


async def run_up(
    stack: RenderedStack,
    files: RunFiles,
    components: list[str],
    provision_after: bool = False,
) -> int:
    """Start the planned children, print status, wait for SIGINT/SIGTERM, stop them; exit code."""
    try:
        specs = build_plan(stack, files, components)
    except PlanError as err:
        print(f"up: {err}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Child events (start, healthy, crash/restart, stop) are logged by the supervisor.
        sup = Supervisor(specs, files.run_dir)
        # Ctrl-C during start-up aborts the start (Supervisor.start stops what it started).
        starting = asyncio.create_task(sup.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            _say("interrupted during start-up; stopping")
            starting.cancel()
            await asyncio.wait({starting})
            await sup.aclose()  # idempotent; makes sure even a half-done start is undone
            _say("stopped; no child left running")
            return 0
        failure = starting.exception()
        if isinstance(failure, StartError):
            print(f"up: {failure}", file=sys.stderr)
            return 1
        if failure is not None:
            raise failure
        edge = "sip-edge" in components
        return await _serve(stack, files, sup, stop, provision_after, edge)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(
    stack: RenderedStack,
    files: RunFiles,
    sup: Supervisor,
    stop: asyncio.Event,
    provision_after: bool,
    with_edge: bool,
) -> int:
    try:
        if provision_after:
            from worker.config.telephony import load_telephony
            from worker.telephony.provision import ProvisionError, provision

            try:
                tel = load_telephony(stack.telephony_path, stack.env)
                edge = stack.sip_edge_target if with_edge else None
                result = await provision(
                    tel, stack.livekit_url, stack.api_key, stack.api_secret, edge=edge
                )
                for line in result.summary_lines():
                    _say(f"provision: {line}")
            except (ProvisionError, ConfigError) as err:
                _say(f"provision failed (the stack keeps running): {err}")
        _say("stack is up (Ctrl-C or SIGTERM stops it):")
        for line in _status_lines(stack, files, sup):
            _say("  " + line)
        await stop.wait()
        _say("stopping")
    finally:
        await sup.aclose()
    _say("stopped; no child left running")
    return 0


def _up(args: argparse.Namespace) -> int:
    report = run_checks(args)
    if not report.ok:
        print(f"up: check-config found {len(report.problems)} problem(s):", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    assert report.stack is not None
    # Resolved now, not at parser build time: other modules may register components later.
    chosen = args.components or ",".join(COMPONENT_BUILDERS)
    components = [c.strip() for c in chosen.split(",") if c.strip()]
    edge = report.telephony.sip_edge if report.telephony is not None else None
    if edge is not None and not args.components:
        # config/telephony.yaml: sip_edge.enabled / media_relay false leave those out
        if not edge.enabled:
            components = [c for c in components if c not in ("sip-edge", "rtp-relay")]
        elif edge.media_relay == "off":
            components = [c for c in components if c != "rtp-relay"]
    run_dir: Path = args.run_dir or (
        project_root() / ".run" / f"{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    files = write_run_files(report.stack, run_dir)
    _say(f"profile {args.profile}, run directory {run_dir}")
    return asyncio.run(run_up(report.stack, files, components, args.provision))


def register(subparsers: Any) -> None:
    """Add ``up`` to the ``voicestack`` command line."""
    up = subparsers.add_parser(
        "up",
        help="start and supervise redis, livekit-server, livekit-sip, the inference server and "
        "agent workers until Ctrl-C",
    )
    add_common_arguments(up)
    up.add_argument(
        "--components",
        default=None,
        help="comma-separated components to start, in stack order (default: every registered "
        f"component: {','.join(CORE_COMPONENTS)} and any added to COMPONENT_BUILDERS)",
    )
    up.add_argument("--run-dir", type=Path, default=None, help="where configs and logs go")
    up.add_argument(
        "--provision",
        action="store_true",
        help="once healthy, apply config/telephony.yaml (as `voicestack provision` does)",
    )
    up.set_defaults(func=_up)
