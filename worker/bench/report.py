"""The benchmark's outputs: the printed tables, the JSON file and the PNG plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.bench.capacity import capacity, meets_target
from worker.bench.results import STAGES, ModeResult

__all__ = [
    "EXTRA_LIMITS_MS",
    "SCHEMA",
    "BenchResult",
    "capacity_at",
    "format_mode",
    "format_report",
    "ratio",
    "write_json",
    "write_plot",
]

SCHEMA = "voicestack.bench.inference/1"
CANDIDATE = "deadline"
BASELINE = "serial"
EXTRA_LIMITS_MS: tuple[float, ...] = (1000.0, 1500.0, 2000.0, 3000.0)
"""Looser targets for which capacity is also derived (from the points measured for the main
target): on a small CPU box the tiny models may never reach 600 ms, and the ratio of the
modes' capacities at a looser target is still informative."""


def capacity_at(m: ModeResult, limit_ms: float) -> int:
    """Capacity of ``m`` at another latency target, from the points that were measured."""
    verdicts = {
        p.n_calls: meets_target(
            p95_compute_ms=p.stage("compute").p95,
            completed=p.completed,
            refused=p.refused,
            errors=p.errors,
            limit_ms=limit_ms,
        )
        for p in m.points
    }
    return capacity(verdicts)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or ``None`` when either is unknown or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class BenchResult:
    """One invocation: every mode's sweep plus the parameters that produced it."""

    started_at: str
    params: dict[str, Any]
    report_n: tuple[int, ...]
    limit_ms: float
    modes: dict[str, ModeResult] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def p95_compute(self, mode: str, n: int) -> float | None:
        m = self.modes.get(mode)
        point = m.point(n) if m else None
        return point.stage("compute").p95 if point else None

    def ratios(self) -> dict[str, Any]:
        """Scheduler over serial baseline: capacity (higher is better) and p95 compute
        latency at each report N (lower is better); ``None`` where undefined."""
        cand, base = self.modes.get(CANDIDATE), self.modes.get(BASELINE)
        return {
            "definition": f"{CANDIDATE} / {BASELINE}",
            "capacity": ratio(cand.capacity if cand else None, base.capacity if base else None),
            "p95_compute": {
                str(n): ratio(self.p95_compute(CANDIDATE, n), self.p95_compute(BASELINE, n))
                for n in self.report_n
            },
            "capacity_at_limit_ms": {
                f"{limit:.0f}": ratio(
                    capacity_at(cand, limit) if cand else None,
                    capacity_at(base, limit) if base else None,
                )
                for limit in EXTRA_LIMITS_MS
            },
        }

    def to_json(self, *, include_turns: bool = True) -> dict[str, Any]:
        """The JSON document written to ``out/bench/<timestamp>.json``."""
        return {
            "schema": SCHEMA,
            "started_at": self.started_at,
            "machine": self.machine,
            "params": self.params,
            "limit_ms": self.limit_ms,
            "report_n": list(self.report_n),
            "modes": {
                name: {
                    "capacity": m.capacity,
                    "capacity_at_limit_ms": {
                        f"{limit:.0f}": capacity_at(m, limit) for limit in EXTRA_LIMITS_MS
                    },
                    "server_log": m.server_log,
                    "points": [p.to_json(include_turns=include_turns) for p in m.sorted_points()],
                }
                for name, m in self.modes.items()
            },
            "ratios": self.ratios(),
        }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def format_mode(m: ModeResult, limit_ms: float) -> str:
    """One mode's table: a row per N."""
    head = (
        f"mode {m.mode}: capacity N={m.capacity} "
        f"(largest N with p95 compute <= {limit_ms:.0f} ms, no refusals, no errors)"
    )
    cols = (
        f"{'N':>4} {'ok?':>4} {'turns':>5} {'refused':>7} {'errors':>6} {'turns/s':>7}  "
        f"{'compute p50/p95/p99 ms':>22}  "
        + "  ".join(f"{s + ' p95':>14}" for s in STAGES if s != "compute")
    )
    lines = [head, cols]
    for p in m.sorted_points():
        c = p.stage("compute")
        stage_cols = "  ".join(f"{_ms(p.stage(s).p95):>14}" for s in STAGES if s != "compute")
        lines.append(
            f"{p.n_calls:>4} {'yes' if p.passed else 'no':>4} {p.completed:>5} {p.refused:>7} "
            f"{p.errors:>6} {p.throughput_tps:>7.2f}  "
            f"{_ms(c.p50) + ' / ' + _ms(c.p95) + ' / ' + _ms(c.p99):>22}  {stage_cols}"
        )
    return "\n".join(lines)


def format_report(result: BenchResult) -> str:
    """Everything printed at the end of a run: a table per mode, then the ratios."""
    parts = [format_mode(m, result.limit_ms) for m in result.modes.values()]
    if CANDIDATE in result.modes and BASELINE in result.modes:
        r = result.ratios()
        cand, base = result.modes[CANDIDATE], result.modes[BASELINE]
        lines = [
            f"{CANDIDATE} vs {BASELINE} (ratio = {CANDIDATE} / {BASELINE}):",
            f"  capacity: {cand.capacity} vs {base.capacity} -> {_x(r['capacity'])}",
        ]
        for n in result.report_n:
            lines.append(
                f"  p95 compute at N={n}: {_ms(result.p95_compute(CANDIDATE, n))} ms vs "
                f"{_ms(result.p95_compute(BASELINE, n))} ms -> {_x(r['p95_compute'][str(n)])}"
            )
        for limit in EXTRA_LIMITS_MS:
            c, b = capacity_at(cand, limit), capacity_at(base, limit)
            lines.append(
                f"  capacity at p95 <= {limit:.0f} ms (measured points only): {c} vs {b} -> "
                f"{_x(r['capacity_at_limit_ms'][f'{limit:.0f}'])}"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_json(result: BenchResult, path: Path) -> Path:
    """Write the full JSON document (with every turn) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def write_plot(result: BenchResult, path: Path, modes: Sequence[str] | None = None) -> Path:
    """PNG of p95 compute latency versus N, one line per mode, with the latency target."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for name in modes or list(result.modes):
            m = result.modes[name]
            pts = [(p.n_calls, p.stage("compute").p95) for p in m.sorted_points()]
            xs = [n for n, v in pts if v is not None]
            ys = [v for _, v in pts if v is not None]
            ax.plot(xs, ys, marker="o", label=f"{name} (capacity {m.capacity})")
            for p in m.sorted_points():
                p95 = p.stage("compute").p95
                if p95 is not None and (p.refused or p.errors):
                    # p95 covers completed turns only: show what it leaves out
                    note = ", ".join(
                        f"{k} {v}" for k, v in (("refused", p.refused), ("errors", p.errors)) if v
                    )
                    ax.annotate(note, (p.n_calls, p95), textcoords="offset points", xytext=(4, 6))
        ax.axhline(
            result.limit_ms, color="grey", linestyle="--", label=f"target {result.limit_ms:.0f} ms"
        )
        ax.set_xscale("log", base=2)
        ns = sorted({p.n_calls for m in result.modes.values() for p in m.points})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("concurrent calls N")
        ax.set_ylabel("p95 compute latency (ms)")
        ax.set_title("voicestack bench inference: end of turn -> first TTS audio")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
