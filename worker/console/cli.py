"""``voicestack console``: serve the web console (loopback by default; login required)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from worker.config.agent import AgentConfig, load_agent_config, load_call_flows
from worker.config.flows import load_flows
from worker.config.loader import ConfigError
from worker.console.auth import AuthError, secrets_from_env

if TYPE_CHECKING:
    from worker.console.app import ConsoleSettings

__all__ = ["DEFAULT_PORT", "build_settings", "register"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8090
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "agent.yaml"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_settings(
    cfg: AgentConfig, config_path: Path, env: Mapping[str, str], flows_file: Path | None = None
) -> ConsoleSettings:
    """The console's settings from the agent config, its flows and the environment (raises
    ``AuthError`` without a usable password, ``ConfigError`` on a broken config)."""
    from worker.console.app import ConsoleSettings

    password, token = secrets_from_env(env)
    flows = load_flows(flows_file) if flows_file else load_call_flows(cfg, config_path)
    records = cfg.records.resolved(env)
    return ConsoleSettings(
        password=password,
        api_token=token,
        redis_url=records.live_url,
        store_url=records.store_url,
        recordings_dir=Path(records.recordings_dir),
        inference_url=env.get("INFERENCE_URL") or cfg.inference.url,
        transfer_targets=dict(flows.transfer_targets),
        env=dict(env),
    )


def _cmd_console(args: argparse.Namespace) -> int:
    try:
        cfg = load_agent_config(args.config)
        settings = build_settings(cfg, Path(args.config), os.environ, args.flows)
    except AuthError as err:
        print(f"console: refusing to start: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"console: {err}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(
            f"console: WARNING: listening on {args.host}, not loopback: terminate TLS in front "
            "of the console (a reverse proxy); passwords and session cookies must not cross "
            "a network in clear text",
            file=sys.stderr,
        )
    # Imported here: aiohttp, Jinja2 and the store load only for this command.
    from aiohttp import web

    from worker.console.app import create_app

    app = create_app(settings)
    print(f"console: http://{args.host}:{args.port}/ (live calls from {settings.redis_url})")
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=5.0)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``voicestack console``."""
    parser = subparsers.add_parser(
        "console",
        help="web console: live calls, call history and records (password: "
        "VOICESTACK_CONSOLE_PASSWORD)",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="agent config (YAML)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port")
    parser.add_argument(
        "--flows",
        type=Path,
        default=None,
        help="call flows file (default: the agent config's flows); names the transfer targets",
    )
    parser.set_defaults(func=_cmd_console)
