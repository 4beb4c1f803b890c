"""The ``voicestack`` command line. Each command lives in the module that owns its concern and
registers itself through a ``register(subparsers)`` function listed in ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

from worker.offline import apply_offline_env
from worker.process_exit import exit_process

__all__ = ["build_parser", "main", "run"]

# Each module defines ``register(subparsers: argparse._SubParsersAction) -> None``; the parsers it
# adds call ``set_defaults(func=handler)`` where ``handler(args) -> int`` is the exit status.
COMMAND_MODULES: tuple[str, ...] = (
    "worker.telephony.cli",
    "worker.stack.cli",
    "worker.agent.runner",
    "worker.caller.demo",
    "worker.inference.cli",
    "worker.inference.selftest",
    "worker.bench.cli",
    "worker.bench.loadtest_cli",
    "worker.inference.scheduler.sim_cli",
    "worker.records.cli",
    "worker.console.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicestack",
        description="Self-hosted, fully local voice-agent stack for call centers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voicestack`` console script."""
    apply_offline_env()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    status: int = args.func(args)
    return status


def run() -> None:
    """The console script: :func:`main`, then an exit that survives livekit.rtc's threads."""
    exit_process(main())


if __name__ == "__main__":
    run()
