"""``voicestack bench inference``: the inference server's load benchmark (docs/benchmark.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from worker.bench.report import format_report, write_json, write_plot
from worker.bench.runner import MODES, BenchError, BenchOptions, run_bench
from worker.bench.server_proc import ServerStartError
from worker.bench.utterances import UtteranceError
from worker.config.loader import ConfigError
from worker.models.paths import ModelNotFoundError, bundled_model_files

__all__ = ["options_from_args", "register"]

log = logging.getLogger(__name__)

# --quick: one turn per call at N = 1 and 4, no refinement: a couple of minutes in all.
_QUICK: dict[str, Any] = {
    "ladder": (1, 4),
    "report_n": (1, 4),
    "turns_per_call": 1,
    "point_s": 20.0,
    "stagger_s": 1.0,
    "refine": False,
}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _modes(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in MODES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"modes must be a subset of {','.join(MODES)}")
    return values


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``bench inference`` to the ``voicestack`` command line."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    d = BenchOptions()
    p = sub.add_parser(
        "inference",
        help="load-test the inference server: scheduler vs serial baseline",
        description=(
            "Start the inference server once per scheduling mode, drive N concurrent synthetic "
            "calls (real speech, realistic turn timing) at it for each N of a sweep, and report "
            "per-stage and compute latency percentiles, throughput, refusals and the capacity "
            "(largest N with p95 compute latency within the limit and no refusals). Writes "
            "JSON and a PNG plot to --out-dir."
        ),
    )
    p.add_argument("--config", type=Path, default=d.config, help="base inference config")
    p.add_argument("--modes", type=_modes, help=f"default {','.join(d.modes)}")
    p.add_argument(
        "--n", dest="ladder", type=_int_list, help="N values to sweep (default 1,2,4,8,16)"
    )
    p.add_argument("--report-n", type=_int_list, help="N always measured and compared (1,4,8)")
    p.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                   help="do not bisect between the capacity and the first failing N")  # fmt: skip
    p.add_argument("--max-points", type=int, help=f"per mode (default {d.max_points})")
    p.add_argument(
        "--turns", dest="turns_per_call", type=int, help=f"per call ({d.turns_per_call})"
    )
    p.add_argument("--point-s", type=float, help=f"no turn starts after this ({d.point_s:.0f} s)")
    p.add_argument("--stagger-s", type=float, help=f"call start spread ({d.stagger_s} s)")
    p.add_argument("--seed", type=int, help="call plan seed (0)")
    p.add_argument("--limit-ms", type=float, help="p95 compute target for capacity (600)")
    p.add_argument("--max-tokens", type=int, help=f"LLM answer length ({d.max_tokens})")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    p.add_argument("--sequential", dest="interleave", action="store_false", default=None,
                   help="one mode after the other (default: alternate point by point)")  # fmt: skip
    p.add_argument("--no-interim", dest="interim", action="store_false", default=None,
                   help="STT without interim transcripts (isolates their cost)")  # fmt: skip
    p.add_argument("--out-dir", type=Path, default=d.out_dir, help="JSON and PNG go here")
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir,
                   help="caller audio cache, temp configs and server logs")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short run: N=1,4, one turn per call")
    p.set_defaults(func=_run)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Defaults, then the ``--quick`` preset, then explicit flags."""
    values: dict[str, Any] = dict(_QUICK) if args.quick else {}
    for key in (
        "modes", "ladder", "report_n", "refine", "max_points", "turns_per_call", "point_s",
        "stagger_s", "seed", "limit_ms", "max_tokens", "warmup", "interim", "interleave",
    ):  # fmt: skip
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    return BenchOptions(
        config=args.config, out_dir=args.out_dir, cache_dir=args.cache_dir, **values
    )


def _run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
        voice = bundled_model_files().tts_onnx
        result, stamp = run_bench(opts, voice)
    except (ConfigError, ValueError, ModelNotFoundError) as err:
        print(f"voicestack bench inference: {err}", file=sys.stderr)
        return 2
    except (ServerStartError, UtteranceError, BenchError) as err:
        print(f"voicestack bench inference: {err}", file=sys.stderr)
        return 1
    json_path = write_json(result, opts.out_dir / f"{stamp}.json")
    png_path = write_plot(result, opts.out_dir / f"{stamp}.png")
    print(format_report(result))
    print(f"\nJSON: {json_path}\nplot: {png_path}")
    return 0
