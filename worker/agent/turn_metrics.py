"""Per-turn latency metrics of a session: one log line per agent reply, and Prometheus histograms.

livekit-agents 1.8 attaches timings to each ``ChatMessage.metrics`` (``metrics_collected`` is
deprecated): the user message carries end-of-utterance and transcription delays, the
assistant message LLM time-to-first-token, TTS time-to-first-byte and ``e2e_latency``: from the
caller's end of speech as the agent's VAD saw it to the first agent audio frame captured for
publishing. That last one is what we export as ``voicestack_agent_response_seconds``: the agent's
share of voice-to-voice latency, without the two media legs (caller -> agent, agent -> caller).

The histograms live in job processes; the worker's main process serves them through
prometheus_client's multiprocess mode (see :mod:`worker.agent.metrics_export`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

__all__ = [
    "RESPONSE_METRIC",
    "STAGES",
    "STAGE_METRIC",
    "TurnMetrics",
    "TurnMetricsLog",
    "TurnMetricsRecorder",
    "default_recorder",
    "parse_turn_lines",
]

logger = logging.getLogger("voicestack.agent.metrics")

STAGE_METRIC = "voicestack_agent_turn_stage_seconds"
RESPONSE_METRIC = "voicestack_agent_response_seconds"
STAGES = ("end_of_utterance", "stt", "llm_ttft", "tts_ttfb")
"""The ``stage`` label values of :data:`STAGE_METRIC`."""
# A phone reply is good under ~1 s and broken past a few; finer buckets where it matters.
_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass
class TurnMetrics:
    """Timings of one user turn and the reply to it, in seconds (None when not measured)."""

    turn: int
    user_text: str = ""
    agent_text: str = ""
    end_of_utterance_delay: float | None = None
    stt_delay: float | None = None
    llm_ttft: float | None = None
    tts_ttfb: float | None = None
    e2e: float | None = None

    def log_line(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f}ms"

        return (
            f"turn {self.turn}: eou={ms(self.end_of_utterance_delay)} stt={ms(self.stt_delay)} "
            f"llm_ttft={ms(self.llm_ttft)} tts_ttfb={ms(self.tts_ttfb)} e2e={ms(self.e2e)}"
        )

    def stages(self) -> dict[str, float]:
        """The measured stage timings by ``stage`` label (unmeasured stages left out)."""
        values = (self.end_of_utterance_delay, self.stt_delay, self.llm_ttft, self.tts_ttfb)
        return {stage: v for stage, v in zip(STAGES, values, strict=True) if v is not None}


_TEXT_FIELDS = ("user_text", "agent_text")

_LINE = re.compile(
    r"call (?P<call>\S+) turn (?P<turn>\d+): eou=(?P<eou>\S+) stt=(?P<stt>\S+) "
    r"llm_ttft=(?P<llm>\S+) tts_ttfb=(?P<tts>\S+) e2e=(?P<e2e>\S+)"
)


def parse_turn_lines(text: str) -> list[tuple[str, TurnMetrics]]:
    """``(call_id, turn)`` for every :meth:`TurnMetrics.log_line` in an agent log (the greeting,
    turn 0, included); the benchmark reads the agent's breakdown this way."""

    def seconds(value: str) -> float | None:
        return None if value == "-" else float(value.removesuffix("ms")) / 1000

    out: list[tuple[str, TurnMetrics]] = []
    for m in _LINE.finditer(text):
        out.append(
            (
                m["call"],
                TurnMetrics(
                    turn=int(m["turn"]),
                    end_of_utterance_delay=seconds(m["eou"]),
                    stt_delay=seconds(m["stt"]),
                    llm_ttft=seconds(m["llm"]),
                    tts_ttfb=seconds(m["tts"]),
                    e2e=seconds(m["e2e"]),
                ),
            )
        )
    return out


class TurnMetricsRecorder:
    """Observes completed turns into the per-stage and response-latency histograms.

    One per process in production (:func:`default_recorder`); tests pass their own registry.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.stage_seconds = Histogram(
            STAGE_METRIC,
            "Per-turn latency of each agent stage: end_of_utterance (VAD end of speech -> end "
            "of turn), stt (end of speech -> final transcript), llm_ttft, tts_ttfb",
            ["stage"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.response_seconds = Histogram(
            RESPONSE_METRIC,
            "Caller's end of speech (agent VAD) -> first agent audio frame published; "
            "voice-to-voice latency without the two media legs",
            buckets=_BUCKETS,
            registry=registry,
        )

    def record(self, turn: TurnMetrics) -> None:
        """Observe every measured timing of ``turn``; negative values (clock skew) are dropped."""
        for stage, value in turn.stages().items():
            if value >= 0:
                self.stage_seconds.labels(stage=stage).observe(value)
        if turn.e2e is not None and turn.e2e >= 0:
            self.response_seconds.observe(turn.e2e)


@functools.cache
def default_recorder() -> TurnMetricsRecorder:
    """The process-wide recorder on the default registry, made on first use.

    Lazily: the worker's main process imports this module before livekit-agents empties the
    multiprocess directory, and a histogram made then would write to a deleted file.
    """
    return TurnMetricsRecorder()


class TurnMetricsLog:
    """Collects ``conversation_item_added`` messages into :class:`TurnMetrics` records.

    Each completed turn is logged and observed by ``recorder`` (default: the process-wide
    :func:`default_recorder`).
    """

    def __init__(
        self,
        call_id: str,
        recorder: TurnMetricsRecorder | None = None,
        *,
        log_transcripts: bool = False,
        redact: Callable[[str], str] = str,
    ) -> None:
        """``log_transcripts``: put what the caller and the agent said on the log record too
        (``worker.log_transcripts``; off by default: callers' words are personal data and a
        JSON log handler ships every field of a record)."""
        self.call_id = call_id
        self._recorder = recorder
        self._log_transcripts = log_transcripts
        self._redact = redact  # even logged transcripts go through the line's PII redaction
        self.turns: list[TurnMetrics] = []
        self._pending: TurnMetrics | None = None
        self._user_turns = 0

    def on_message(self, role: str, text: str, metrics: dict[str, Any]) -> TurnMetrics | None:
        """Feed one chat message; returns the completed turn when an agent reply closes it."""
        if role == "user":
            self._user_turns += 1
            self._pending = TurnMetrics(
                turn=self._user_turns,
                user_text=text,
                end_of_utterance_delay=metrics.get("end_of_turn_delay"),
                stt_delay=metrics.get("transcription_delay"),
            )
            return None
        if role != "assistant":
            return None
        # A reply with no user turn before it (the greeting) keeps the last user turn's number.
        turn = self._pending or TurnMetrics(turn=self._user_turns)
        self._pending = None
        turn.agent_text = text
        turn.llm_ttft = metrics.get("llm_node_ttft")
        turn.tts_ttfb = metrics.get("tts_node_ttfb")
        turn.e2e = metrics.get("e2e_latency")
        self.turns.append(turn)
        (self._recorder or default_recorder()).record(turn)
        logger.info(
            "call %s %s",
            self.call_id,
            turn.log_line(),
            extra={"call_id": self.call_id, "turn_metrics": self._record_fields(turn)},
        )
        return turn

    def _record_fields(self, turn: TurnMetrics) -> dict[str, Any]:
        fields = asdict(turn)
        for name in _TEXT_FIELDS:
            if self._log_transcripts:
                fields[name] = self._redact(fields[name])
            else:
                fields.pop(name, None)
        return fields
