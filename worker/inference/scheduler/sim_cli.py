"""``voicestack scheduler-sim``: the deadline scheduler against the serial baseline, on virtual
time with synthetic engines (no models, runs in a second). A sanity check of scheduling policy,
not a measurement of the real stack: the benchmark measures that."""

from __future__ import annotations

import argparse
import json
import sys

from worker.config.loader import ConfigError, load_model

from .config import SchedulingConfig
from .simulate import CPU_PROFILES, GPU_PROFILES, SimResult, Workload, compare

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scheduler-sim`` command."""
    parser = subparsers.add_parser(
        "scheduler-sim",
        help="simulate N calls under the deadline scheduler and the serial baseline",
        description=__doc__,
    )
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    parser.add_argument("--turns", type=int, default=3, help="turns per call (default 3)")
    parser.add_argument("--profile", choices=("cpu", "gpu"), default="cpu", help="engine shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="YAML scheduling config (SchedulingConfig)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.turns < 1:
        print("error: --calls and --turns must be >= 1", file=sys.stderr)
        return 2
    try:
        config = load_model(args.config, SchedulingConfig) if args.config else SchedulingConfig()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    profiles = GPU_PROFILES if args.profile == "gpu" else CPU_PROFILES
    workload = Workload(calls=args.calls, turns_per_call=args.turns, seed=args.seed)
    results = compare(workload, profiles, config)
    if args.json:
        print(json.dumps({mode: _as_dict(r) for mode, r in results.items()}, indent=2))
        return 0
    print(f"{args.calls} calls x {args.turns} turns, {args.profile} profile, seed {args.seed}")
    print("latency after end of turn, ms: p50 / p95 / max")
    for mode, r in results.items():
        print(f"\n{mode}: {r.turns_completed} turns done, {r.failed_turns} failed")
        for stage, s in r.summary().items():
            print(f"  {stage:<17} {s['p50_ms']:8.0f} {s['p95_ms']:8.0f} {s['max_ms']:8.0f}")
        batches = ", ".join(f"{e} {b:.2f}" for e, b in r.mean_batch.items())
        misses = ", ".join(f"{e} {n}" for e, n in r.deadline_misses.items())
        print(f"  mean batch: {batches}; deadline misses: {misses}")
    return 0


def _as_dict(r: SimResult) -> dict[str, object]:
    return {
        "turns_completed": r.turns_completed,
        "failed_turns": r.failed_turns,
        "refused": r.refused,
        "latency_ms": r.summary(),
        "mean_batch": r.mean_batch,
        "deadline_misses": r.deadline_misses,
    }
