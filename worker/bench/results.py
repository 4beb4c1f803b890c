"""What the benchmark measured: one record per caller turn, aggregated per point and per mode.

All times in a :class:`TurnRecord` are milliseconds; stage latencies are measured on the
client's monotonic clock. The stages of one turn (see docs/benchmark.md):

- ``stt_final``: flush sent (the end-of-turn decision, t0) -> final transcript received;
- ``llm_ttft``: LLM stream opened -> first token;
- ``llm_clause``: LLM stream opened -> first complete clause of tokens;
- ``tts_ttfb``: TTS stream opened with that clause -> first audio frame;
- ``compute``: t0 -> first audio frame (DESIGN.md's compute latency).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.bench.capacity import meets_target
from worker.bench.stats import Summary, summarize

__all__ = ["STAGES", "ModeResult", "Outcome", "PointResult", "TurnRecord"]

STAGES: tuple[str, ...] = ("stt_final", "llm_ttft", "llm_clause", "tts_ttfb", "compute")
"""Stage names, in pipeline order; ``compute`` spans the whole critical path."""


class Outcome(enum.StrEnum):
    """How a turn ended."""

    OK = "ok"
    REFUSED = "refused"
    """The server answered ``overloaded`` (admission control); counted, never retried."""
    ERROR = "error"
    """Anything else: an error frame, a dropped connection, a timeout, an empty answer."""


@dataclass
class TurnRecord:
    """One caller turn, filled in as the turn progresses."""

    call_index: int
    turn_index: int
    utterance_s: float
    outcome: Outcome = Outcome.OK
    stages_ms: dict[str, float] = field(default_factory=dict)
    answer_audio_s: float = 0.0
    transcript: str = ""
    reply: str = ""
    failed_stage: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    def fail(self, outcome: Outcome, stage: str, code: str, message: str) -> None:
        """Mark the turn refused or failed at ``stage``."""
        self.outcome = outcome
        self.failed_stage = stage
        self.error_code = code
        self.error_message = message

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "call": self.call_index,
            "turn": self.turn_index,
            "outcome": self.outcome.value,
            "utterance_s": round(self.utterance_s, 3),
            "stages_ms": {k: round(v, 1) for k, v in self.stages_ms.items()},
            "answer_audio_s": round(self.answer_audio_s, 3),
            "transcript": self.transcript,
            "reply": self.reply,
            "failed_stage": self.failed_stage,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }


@dataclass
class PointResult:
    """All turns of one benchmark point: one scheduling mode at one concurrency N."""

    mode: str
    n_calls: int
    wall_s: float
    """From the first call's start to the end of the last turn."""
    turns: list[TurnRecord]
    limit_ms: float
    host_load_1m: float | None = None
    """The machine's 1-minute load average when the point ended (other work skews results)."""
    server_idle_after: bool | None = None
    """Whether the server reported no active stream shortly after the point (slots freed)."""

    @property
    def completed(self) -> int:
        return sum(1 for t in self.turns if t.outcome is Outcome.OK)

    @property
    def refused(self) -> int:
        return sum(1 for t in self.turns if t.outcome is Outcome.REFUSED)

    @property
    def errors(self) -> int:
        return sum(1 for t in self.turns if t.outcome is Outcome.ERROR)

    @property
    def throughput_tps(self) -> float:
        """Completed turns per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def stage(self, name: str) -> Summary:
        """Latency summary of one stage over the completed turns."""
        return summarize(
            [
                t.stages_ms[name]
                for t in self.turns
                if t.outcome is Outcome.OK and name in t.stages_ms
            ]
        )

    @property
    def passed(self) -> bool:
        """Whether this point meets the capacity target (see :func:`meets_target`)."""
        return meets_target(
            p95_compute_ms=self.stage("compute").p95,
            completed=self.completed,
            refused=self.refused,
            errors=self.errors,
            limit_ms=self.limit_ms,
        )

    def to_json(self, *, include_turns: bool = True) -> dict[str, Any]:
        """Plain-JSON form: the summary, and each turn unless ``include_turns`` is false."""
        out: dict[str, Any] = {
            "n": self.n_calls,
            "passed": self.passed,
            "wall_s": round(self.wall_s, 3),
            "turns_ok": self.completed,
            "refused": self.refused,
            "errors": self.errors,
            "throughput_tps": round(self.throughput_tps, 4),
            "host_load_1m": self.host_load_1m,
            "server_idle_after": self.server_idle_after,
            "stages_ms": {name: self.stage(name).to_json() for name in STAGES},
        }
        if include_turns:
            out["turns"] = [t.to_json() for t in self.turns]
        return out


@dataclass
class ModeResult:
    """One scheduling mode's sweep: its points (in the order measured) and capacity."""

    mode: str
    points: list[PointResult] = field(default_factory=list)
    capacity: int = 0
    server_log: str | None = None

    def point(self, n: int) -> PointResult | None:
        """The point measured at concurrency ``n``, if any."""
        for p in self.points:
            if p.n_calls == n:
                return p
        return None

    def sorted_points(self) -> Sequence[PointResult]:
        """Points by ascending N."""
        return sorted(self.points, key=lambda p: p.n_calls)
