"""Deadlines derived from a call's turn.

Critical work is due at fixed budgets after the caller's end of turn, cumulatively: with the
defaults the final transcript is due 40 ms after end of turn, the LLM's first clause 150 ms
after that (190 ms) and the first TTS audio 60 ms after that (250 ms). Slack work (interims,
later clauses) is due when the audio already sent to the caller runs out: ``now + playout``.

:class:`CallClock` remembers, per call, the last end of turn and how far ahead of real time the
audio sent to the caller reaches. It is plain state for the one owner that sees both (the server's
event loop); it reads no clock: every method takes ``now``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .request import SchedulerFullError, Stage

__all__ = ["CallClock", "DeadlineConfig"]


class DeadlineConfig(BaseModel):
    """Turn-relative budgets, in milliseconds. Critical budgets add up along the turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stt_final_ms: float = Field(40.0, gt=0, description="final transcript after end of turn")
    llm_first_clause_ms: float = Field(150.0, gt=0, description="first clause after the final")
    tts_first_ms: float = Field(60.0, gt=0, description="first audio after the first clause")
    interim_slack_ms: float = Field(
        500.0, gt=0, description="an interim transcript is worth having within this long"
    )
    default_slack_ms: float = Field(
        1000.0, gt=0, description="slack of later work when no audio playout is known"
    )
    speech_chars_per_s: float = Field(
        15.0, gt=0, description="speaking rate used to estimate the playout of generated text"
    )

    def turn_offset_s(self, stage: Stage) -> float:
        """Seconds after end of turn at which a critical stage is due (cumulative budgets)."""
        if stage is Stage.STT_FINAL:
            return self.stt_final_ms / 1000.0
        if stage is Stage.LLM_FIRST_CLAUSE:
            return (self.stt_final_ms + self.llm_first_clause_ms) / 1000.0
        if stage is Stage.TTS_FIRST:
            return (self.stt_final_ms + self.llm_first_clause_ms + self.tts_first_ms) / 1000.0
        raise ValueError(f"{stage} is slack work: it has no turn-relative deadline")

    def own_budget_s(self, stage: Stage) -> float:
        """A critical stage's own budget, used when no end of turn is known (e.g. a greeting)."""
        budgets = {
            Stage.STT_FINAL: self.stt_final_ms,
            Stage.LLM_FIRST_CLAUSE: self.llm_first_clause_ms,
            Stage.TTS_FIRST: self.tts_first_ms,
        }
        if stage not in budgets:
            raise ValueError(f"{stage} is slack work: it has no budget of its own")
        return budgets[stage] / 1000.0

    def deadline(
        self,
        stage: Stage,
        now: float,
        turn_end: float | None = None,
        playout_s: float | None = None,
    ) -> float:
        """Absolute deadline of new work at ``now``.

        Critical stages: ``turn_end + cumulative budget`` (which may already be past when an
        earlier stage ran late: then it is simply the most urgent work), or ``now + own budget``
        without a known turn end. Interims: ``now + interim slack``. Later LLM/TTS work:
        ``now + playout_s`` (the audio the caller still has to hear), or the default slack.
        """
        if stage.critical:
            if turn_end is None:
                return now + self.own_budget_s(stage)
            return turn_end + self.turn_offset_s(stage)
        if stage is Stage.STT_INTERIM:
            return now + self.interim_slack_ms / 1000.0
        if playout_s is None:
            return now + self.default_slack_ms / 1000.0
        return now + max(0.0, playout_s)

    def playout_of_text_s(self, chars: int) -> float:
        """Estimated seconds of speech for ``chars`` characters of text."""
        return max(0, chars) / self.speech_chars_per_s


class CallClock:
    """Per call: last end of turn, and the time until which already-sent audio keeps playing.

    Bounded: at most ``max_calls`` calls are tracked; one more raises
    :class:`SchedulerFullError` (admission control should have refused the call first).
    """

    def __init__(self, config: DeadlineConfig, max_calls: int) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self._config = config
        self._max_calls = max_calls
        self._turn_end: dict[str, float] = {}
        self._playout_until: dict[str, float] = {}

    def _track(self, call_id: str) -> None:
        if call_id in self._turn_end or call_id in self._playout_until:
            return
        tracked = set(self._turn_end) | set(self._playout_until)
        if len(tracked) >= self._max_calls:
            raise SchedulerFullError(
                f"call clock full: {self._max_calls} calls tracked, refusing call {call_id}"
            )

    def end_of_turn(self, call_id: str, now: float) -> None:
        """The caller finished speaking at ``now``: later critical deadlines count from here.

        A new turn also means the caller is no longer listening to old audio (barge-in or the
        answer is over), so the playout horizon is reset.
        """
        self._track(call_id)
        self._turn_end[call_id] = now
        self._playout_until[call_id] = now

    def audio_sent(self, call_id: str, now: float, seconds: float) -> None:
        """``seconds`` of agent audio were sent to the caller at ``now``."""
        if seconds < 0:
            raise ValueError(f"audio duration must be >= 0, got {seconds}")
        self._track(call_id)
        start = max(self._playout_until.get(call_id, now), now)
        self._playout_until[call_id] = start + seconds

    def playout_left_s(self, call_id: str, now: float) -> float:
        """Seconds of sent audio the caller has yet to hear: the slack of the call's next clause."""
        return max(0.0, self._playout_until.get(call_id, now) - now)

    def deadline(self, call_id: str, stage: Stage, now: float) -> float:
        """Deadline of new ``stage`` work for ``call_id`` created at ``now``."""
        playout = self.playout_left_s(call_id, now) if call_id in self._playout_until else None
        return self._config.deadline(stage, now, self._turn_end.get(call_id), playout)

    def clause_deadline(self, call_id: str, now: float, chars_before: int) -> float:
        """Deadline of a later clause of the current answer, preceded by ``chars_before``
        characters of text: when the audio sent so far runs out, but never before the earlier
        clauses can have played (their audio may not exist yet: then it is estimated from the
        first clause's deadline plus their text). Keeps clause 3 from overtaking clause 1."""
        due = now + self.playout_left_s(call_id, now)
        turn_end = self._turn_end.get(call_id)
        if turn_end is not None:
            first_audio = turn_end + self._config.turn_offset_s(Stage.TTS_FIRST)
            due = max(due, first_audio + self._config.playout_of_text_s(chars_before))
        return due

    def forget(self, call_id: str) -> None:
        """The call is over; drop its state (unknown calls are ignored)."""
        self._turn_end.pop(call_id, None)
        self._playout_until.pop(call_id, None)

    def __len__(self) -> int:
        return len(set(self._turn_end) | set(self._playout_until))
