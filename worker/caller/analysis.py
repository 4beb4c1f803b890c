"""What the caller heard: speech segments in the recording (energy VAD) matched against the
caller's own schedule, giving the greeting and, per utterance, the agent's answer onset.

Voice-to-voice latency of a turn (DESIGN.md section 1), measured at the caller: from the end of
the caller's utterance (known from the play schedule, which shares the recording's time base:
both start at call answer) to the first sample of agent speech in the recording.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.caller.audio import Pcm
from worker.caller.utterances import ScheduledUtterance

__all__ = [
    "CallAnalysis",
    "Segment",
    "TurnResult",
    "active_frames",
    "analyse_call",
    "format_report",
    "speech_segments",
]


@dataclass(frozen=True)
class Segment:
    """A stretch of speech in the recording, in seconds from its start."""

    start_s: float
    end_s: float


def active_frames(
    samples: Pcm, rate: int, *, frame_ms: int = 20, threshold_dbfs: float = -42.0
) -> np.ndarray:
    """One bool per ``frame_ms`` frame: louder than ``threshold_dbfs`` (someone audible)."""
    hop = max(1, rate * frame_ms // 1000)
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = samples[: n * hop].astype(np.float64).reshape(n, hop) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1) + 1e-12)
    result: np.ndarray = 20 * np.log10(rms) > threshold_dbfs
    return result


def speech_segments(
    samples: Pcm,
    rate: int,
    *,
    frame_ms: int = 20,
    threshold_dbfs: float = -42.0,
    min_gap_s: float = 0.6,
    min_speech_s: float = 0.12,
) -> list[Segment]:
    """Energy-based VAD: frames louder than ``threshold_dbfs`` are speech; gaps shorter than
    ``min_gap_s`` (pauses between words and clauses) are bridged; blips under
    ``min_speech_s`` (codec clicks) are dropped."""
    hop = max(1, rate * frame_ms // 1000)
    active = active_frames(samples, rate, frame_ms=frame_ms, threshold_dbfs=threshold_dbfs)
    n = len(active)
    if n == 0:
        return []
    segments: list[Segment] = []
    start: int | None = None
    for i, on in enumerate(active):
        if on and start is None:
            start = i
        elif not on and start is not None:
            segments.append(Segment(start * hop / rate, i * hop / rate))
            start = None
    if start is not None:
        segments.append(Segment(start * hop / rate, n * hop / rate))
    merged: list[Segment] = []
    for seg in segments:
        if merged and seg.start_s - merged[-1].end_s < min_gap_s:
            merged[-1] = Segment(merged[-1].start_s, seg.end_s)
        else:
            merged.append(seg)
    return [s for s in merged if s.end_s - s.start_s >= min_speech_s]


@dataclass
class TurnResult:
    """One caller utterance and what came back."""

    index: int
    caller_text: str
    utterance_end_s: float
    answer: Segment | None
    """The agent's speech after the utterance (onset to end of its last segment before the
    next utterance); None when the agent stayed silent."""
    agent_text: str = ""

    @property
    def latency_s(self) -> float | None:
        return None if self.answer is None else self.answer.start_s - self.utterance_end_s


@dataclass
class CallAnalysis:
    greeting: Segment | None
    turns: list[TurnResult]
    greeting_text: str = ""

    def latencies(self) -> list[float]:
        return [t.latency_s for t in self.turns if t.latency_s is not None]

    def failures(self) -> list[str]:
        """Why the call failed the demo's bar: no greeting, or an unanswered utterance."""
        problems: list[str] = []
        if self.greeting is None:
            problems.append("the agent did not greet (no speech before the first utterance)")
        elif not self.greeting_text.strip():
            problems.append("the greeting transcribed to nothing")
        for turn in self.turns:
            if turn.answer is None:
                problems.append(f"utterance {turn.index} got no spoken answer")
            elif not turn.agent_text.strip():
                problems.append(f"the answer to utterance {turn.index} transcribed to nothing")
        return problems


def analyse_call(
    recording: Pcm,
    rate: int,
    schedule: Sequence[ScheduledUtterance],
    *,
    threshold_dbfs: float = -42.0,
) -> CallAnalysis:
    """Find the greeting and each answer in ``recording`` (what the caller heard)."""
    segments = speech_segments(recording, rate, threshold_dbfs=threshold_dbfs)
    first_start = schedule[0].start_s if schedule else float("inf")
    before = [s for s in segments if s.start_s < first_start]
    greeting = Segment(before[0].start_s, before[-1].end_s) if before else None
    turns: list[TurnResult] = []
    for i, utt in enumerate(schedule):
        window_end = schedule[i + 1].start_s if i + 1 < len(schedule) else float("inf")
        # Speech already running when the utterance ended belongs to the previous answer
        # (the agent talking over the caller), not to this turn's answer.
        after = [s for s in segments if utt.end_s <= s.start_s < window_end]
        answer = Segment(after[0].start_s, after[-1].end_s) if after else None
        turns.append(
            TurnResult(index=i + 1, caller_text=utt.text, utterance_end_s=utt.end_s, answer=answer)
        )
    return CallAnalysis(greeting=greeting, turns=turns)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_report(analysis: CallAnalysis, *, transport: str) -> str:
    """The conversation and the per-turn voice-to-voice latency table, as printable text."""
    lines = [f"Conversation ({transport}; agent text transcribed from the caller's recording):"]
    greet = analysis.greeting_text.strip() or "(silence)"
    lines.append(f"  agent : {greet}")
    for turn in analysis.turns:
        lines.append(f"  caller: {turn.caller_text}")
        lines.append(f"  agent : {turn.agent_text.strip() or '(no answer)'}")
    lines.append("")
    lines.append(
        "Voice-to-voice latency at the caller (end of caller speech -> agent speech onset)"
    )
    lines.append(f"  {'turn':>4}  {'utt_end_s':>9}  {'onset_s':>8}  {'latency_ms':>10}")
    for turn in analysis.turns:
        onset = "-" if turn.answer is None else f"{turn.answer.start_s:.2f}"
        lines.append(
            f"  {turn.index:>4}  {turn.utterance_end_s:>9.2f}  {onset:>8}  "
            f"{_ms(turn.latency_s):>10}"
        )
    lat = analysis.latencies()
    if lat:
        lines.append(
            f"  p50 {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
            f"over {len(lat)} answered turn(s)"
        )
    else:
        lines.append("  no answered turns")
    return "\n".join(lines)
