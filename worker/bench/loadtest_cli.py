"""``voicestack loadtest``: N concurrent scripted SIP calls into a whole loopback stack, per agent
configuration; see :mod:`worker.bench.loadtest` and docs/latency.md."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from worker.bench.loadtest import LoadtestOptions, run_loadtest
from worker.bench.loadtest_report import format_table, write_json, write_plot
from worker.config.agent import load_agent_config, rebase_flows
from worker.config.loader import ConfigError
from worker.stack.plan import tool_path
from worker.stack.render import project_root

__all__ = ["register"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def variant_config(base: Path, overrides: str, out: Path) -> Path:
    """Write ``base`` with dotted-key overrides (``turn.detector=transcript,llm.max_tokens=48``,
    values parsed as YAML) to ``out``; the command line then names the lever it measured."""
    data = yaml.safe_load(base.read_text()) or {}
    rebase_flows(data, base)
    for item in filter(None, (p.strip() for p in overrides.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--variant: expected key=value, got {item!r}")
        node = data
        *parents, leaf = key.strip().split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--variant: {key} is not inside a section")
        node[leaf] = yaml.safe_load(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run(args: argparse.Namespace) -> int:
    """Check the inputs, run, write JSON + PNG, print the table; 1 when a call failed."""
    root = project_root()
    out = args.out or root / ".run" / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    base = root / "config" / "agent.yaml"
    configs = list(args.agent_config or ([] if args.variant else [base]))
    try:
        for i, overrides in enumerate(args.variant or []):
            configs.append(variant_config(base, overrides, out / f"variant{i + 1}.yaml"))
            print(f"loadtest: variant{i + 1} = config/agent.yaml with {overrides}")
    except ConfigError as err:
        print(f"loadtest: {err}")
        return 2
    for cfg in configs:
        try:
            load_agent_config(cfg)
        except ConfigError as err:
            print(f"loadtest: {err}")
            return 2
    if not tool_path("livekit-sip").exists():
        print(f"loadtest: needs {tool_path('livekit-sip')}: run scripts/setup.sh")
        return 2
    opts = LoadtestOptions(
        calls=args.calls,
        rounds=args.rounds,
        agent_configs=tuple(configs),
        out_dir=out,
        stagger_s=args.stagger_s,
    )
    runs = run_loadtest(opts)
    print(format_table(runs))
    data = write_json(runs, out / "loadtest.json")
    print(f"results: {data}; {write_plot(runs, out / 'loadtest.png')}")
    failed = any(r.error or any(c.error for c in r.calls) for r in runs)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``voicestack loadtest``."""
    p = subparsers.add_parser(
        "loadtest",
        help="concurrent scripted SIP calls into the whole stack; latency at the caller",
        description=(
            "Starts the whole stack on loopback per --agent-config (give two to compare a "
            "lever before/after in one run), places --calls concurrent SIP calls of --rounds "
            "rounds of scripted turns (questions, mid-sentence pauses, a barge-in, a "
            "backchannel) and writes loadtest.json + loadtest.png."
        ),
    )
    p.add_argument("--calls", type=_positive, default=1, help="concurrent calls (default 1)")
    p.add_argument("--rounds", type=_positive, default=2, help="rounds of the 10-turn set per call")
    p.add_argument(
        "--agent-config",
        type=Path,
        action="append",
        help="agent config to measure (repeat for A/B); default config/agent.yaml",
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar="KEY=VALUE,...",
        help="config/agent.yaml with these overrides (repeatable; measured after --agent-config)",
    )
    p.add_argument("--stagger-s", type=float, default=2.0, help="delay between call starts")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.set_defaults(func=run)
