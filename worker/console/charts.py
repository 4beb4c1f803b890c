"""Server-rendered inline SVG: one stacked bar per agent reply, one segment per stage.

Rendered on the server so the call page needs no script (and no chart library) to show it.
Colours come from CSS classes (``stage-<name>``): the page's CSP allows no inline styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from worker.records.record import Turn

__all__ = ["BAR_STAGES", "latency_chart"]

BAR_STAGES: tuple[str, ...] = ("end_of_utterance", "stt", "llm_ttft", "tts_ttfb")
"""Stacked in this order; ``e2e`` is drawn as a tick over the bar."""

_WIDTH = 640
_ROW = 22
_LABEL = 70
_TOP = 24


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def latency_chart(turns: Sequence[Turn]) -> Markup:
    """An SVG of the agent turns' per-stage latency, or an empty Markup when none has any."""
    rows = [(i, t) for i, t in enumerate(turns) if t.role == "agent" and t.latency]
    if not rows:
        return Markup("")
    totals = [
        max(sum(t.latency.get(s, 0.0) for s in BAR_STAGES), t.latency.get("e2e", 0.0))
        for _, t in rows
    ]
    scale_max = max(max(totals), 0.001)
    plot = _WIDTH - _LABEL - 60
    height = _TOP + _ROW * len(rows) + 8
    parts = [
        f'<svg class="latency-chart" role="img" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">',
        "<title>Per-turn latency by stage</title>",
    ]
    x = _LABEL
    for stage in (*BAR_STAGES, "e2e"):
        parts.append(f'<rect class="stage-{stage}" x="{x}" y="4" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{x + 14}" y="13">{escape(stage)}</text>')
        x += 14 + 8 * len(stage) + 12
    for row, ((index, turn), total) in enumerate(zip(rows, totals, strict=True)):
        y = _TOP + row * _ROW
        parts.append(f'<g class="turn" data-turn="{index}">')
        parts.append(f'<text class="label" x="0" y="{y + 14}">turn {index + 1}</text>')
        x0 = float(_LABEL)
        for stage in BAR_STAGES:
            seconds = turn.latency.get(stage, 0.0)
            if seconds <= 0:
                continue
            width = plot * seconds / scale_max
            parts.append(
                f'<rect class="stage-{stage}" x="{x0:.1f}" y="{y + 3}" width="{width:.1f}" '
                f'height="{_ROW - 6}"><title>{escape(stage)}: {_fmt(seconds)}</title></rect>'
            )
            x0 += width
        e2e = turn.latency.get("e2e")
        if e2e:
            ex = _LABEL + plot * e2e / scale_max
            parts.append(
                f'<line class="stage-e2e" x1="{ex:.1f}" x2="{ex:.1f}" y1="{y + 1}" '
                f'y2="{y + _ROW - 1}"><title>e2e: {_fmt(e2e)}</title></line>'
            )
        parts.append(
            f'<text class="value" x="{_LABEL + plot + 6}" y="{y + 14}">{_fmt(total)}</text>'
        )
        parts.append("</g>")
    parts.append("</svg>")
    # Every interpolated value is a number or escaped above.
    return Markup("".join(parts))
