"""The load test's results: per-configuration summary, ``loadtest.json``, ``loadtest.png`` and
the printed table. Percentiles are nearest-rank over the measured turns (no interpolation: with
20 turns, p95 is the 19th smallest)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from worker.bench.loadtest import ConfigRun, TurnRecord
from worker.bench.stats import nearest_rank

__all__ = ["format_table", "summarize", "write_json", "write_plot"]

_STAGES = (
    ("end_of_utterance_delay", "end of turn"),
    ("stt_delay", "STT final"),
    ("llm_ttft", "LLM first token"),
    ("tts_ttfb", "TTS first audio"),
    ("e2e", "agent total"),
)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _turns(run: ConfigRun) -> list[TurnRecord]:
    return [t for c in run.calls for t in c.turns]


def summarize(run: ConfigRun) -> dict[str, Any]:
    """The figures the latency targets are judged on, for one configuration (ms)."""
    turns = _turns(run)
    answered = [t.v2v_s for t in turns if t.v2v_s is not None]
    expecting = [t for t in turns if t.kind != "backchannel"]
    paused = [t for t in turns if t.kind == "paused"]
    overlaps = [t for t in turns if t.kind in ("barge_in", "backchannel")]
    stops = [t.stop_s for t in overlaps if t.stop_s is not None]
    backchannels = [t for t in turns if t.kind == "backchannel" and t.agent_talking_at_onset]
    stages: dict[str, dict[str, float | None]] = {}
    for key, _ in _STAGES:
        vals = [v for t in run.agent_turns if (v := getattr(t, key)) is not None]
        stages[key] = {"p50": _ms(nearest_rank(vals, 50)), "p95": _ms(nearest_rank(vals, 95))}
    return {
        "label": run.label,
        "config": run.config,
        "calls": len(run.calls),
        "failed_calls": [c.error for c in run.calls if c.error]
        + ([run.error] if run.error else []),
        "not_greeted": sum(1 for c in run.calls if not c.greeted),
        "turns": len(turns),
        "answered": len(answered),
        "unanswered": len(expecting) - len(answered),
        "v2v_ms": {
            "p50": _ms(nearest_rank(answered, 50)),
            "p95": _ms(nearest_rank(answered, 95)),
            "max": _ms(max(answered) if answered else None),
        },
        "cut_ins": sum(1 for t in paused if t.cut_in),
        "paused_turns": len(paused),
        "overlaps_measured": len(stops),
        "overlaps_agent_silent": sum(1 for t in overlaps if t.agent_talking_at_onset is False),
        "barge_in_stop_ms": {
            "p50": _ms(nearest_rank(stops, 50)),
            "max": _ms(max(stops) if stops else None),
        },
        "backchannels_resumed": sum(1 for t in backchannels if t.resumed_after_s is not None),
        "backchannels_over_agent": len(backchannels),
        "agent_stages_ms": stages,
        "server_means_ms": {k: _ms(v) for k, v in sorted(run.server_means_s.items())},
        "wall_s": round(run.wall_s, 1),
    }


def write_json(runs: Sequence[ConfigRun], path: Path) -> Path:
    """Summaries plus every turn of every call and the agent's breakdown per turn."""
    data = {
        "summary": [summarize(r) for r in runs],
        "runs": [
            {
                "label": r.label,
                "config": r.config,
                "calls": [asdict(c) for c in r.calls],
                "agent_turns": [asdict(t) for t in r.agent_turns],
            }
            for r in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def write_plot(runs: Sequence[ConfigRun], path: Path, *, target_ms: float = 600.0) -> Path:
    """Left: distribution (CDF) of voice-to-voice per configuration with the target; right:
    the agent's stage p50s per configuration."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    try:
        for r in runs:
            vals = sorted(t.v2v_s * 1000 for t in _turns(r) if t.v2v_s is not None)
            if vals:
                ys = [(i + 1) / len(vals) for i in range(len(vals))]
                cdf.step(vals, ys, where="post", label=f"{r.label} (n={len(vals)})")
        cdf.axvline(target_ms, color="grey", linestyle="--", label=f"target {target_ms:.0f} ms")
        cdf.set_xlabel("voice-to-voice at the caller (ms)")
        cdf.set_ylabel("fraction of turns")
        cdf.legend(loc="lower right")
        cdf.grid(alpha=0.3)
        width = 0.8 / max(1, len(runs))
        for i, r in enumerate(runs):
            stages = summarize(r)["agent_stages_ms"]
            ys = [stages[k]["p50"] or 0.0 for k, _ in _STAGES]
            xs = [j + i * width for j in range(len(_STAGES))]
            bars.bar(xs, ys, width=width, label=r.label)
        bars.set_xticks(
            [j + width * (len(runs) - 1) / 2 for j in range(len(_STAGES))],
            [name for _, name in _STAGES],
            rotation=20,
        )
        bars.set_ylabel("p50 (ms; definitions in docs/latency.md)")
        bars.set_title("agent breakdown (its own clock)")
        bars.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(runs: Sequence[ConfigRun]) -> str:
    """The printed summary: one block per configuration."""
    lines: list[str] = []
    for r in runs:
        s = summarize(r)
        v = s["v2v_ms"]
        st = s["agent_stages_ms"]
        lines += [
            f"[{s['label']}] {s['calls']} call(s), {s['turns']} turns, {s['wall_s']:.0f} s "
            f"({s['config']})",
            f"  voice-to-voice at the caller: p50 {_fmt(v['p50'])} ms, p95 {_fmt(v['p95'])} ms, "
            f"max {_fmt(v['max'])} ms over {s['answered']} answered; unanswered {s['unanswered']}",
            f"  cut-ins into a mid-sentence pause: {s['cut_ins']}/{s['paused_turns']}",
            f"  barge-in/backchannel stop at the caller: p50 "
            f"{_fmt(s['barge_in_stop_ms']['p50'])} ms, max {_fmt(s['barge_in_stop_ms']['max'])}"
            f" ms over {s['overlaps_measured']} (agent already silent: "
            f"{s['overlaps_agent_silent']})",
            f"  backchannels resumed: {s['backchannels_resumed']}/{s['backchannels_over_agent']}",
            "  agent breakdown p50 (ms): "
            + ", ".join(f"{name} {_fmt(st[key]['p50'])}" for key, name in _STAGES),
        ]
        if s["server_means_ms"]:
            lines.append(
                "  inference server means (ms): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in s["server_means_ms"].items())
            )
        for err in s["failed_calls"]:
            lines.append(f"  FAILED: {err}")
    return "\n".join(lines)
