"""Per-turn latency metrics of a session, logged as one line per agent reply.

livekit-agents 1.8 attaches timings to each ``ChatMessage.metrics`` (``metrics_collected`` is
deprecated): the user message carries end-of-utterance and transcription delays, the
assistant message LLM time-to-first-token, TTS time-to-first-byte and the end-to-end delay.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TurnMetrics", "TurnMetricsLog"]

logger = logging.getLogger("voicestack.agent.metrics")


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


class TurnMetricsLog:
    """Collects ``conversation_item_added`` messages into :class:`TurnMetrics` records."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
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
        logger.info(
            "%s",
            turn.log_line(),
            extra={"call_id": self.call_id, "turn_metrics": asdict(turn)},
        )
        return turn
