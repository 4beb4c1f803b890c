"""One call's record: what the store keeps, the console shows and ``records export`` writes.

The agent builds it during the call (:mod:`worker.agent.call_record`), redacts it
(:mod:`worker.records.redact`) and hands it to the writer; nothing here touches a database.
Times inside a call (turns, events) are seconds from ``started_at``, so a record reads the same
in every time zone and lines up with its recording.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "RECORD_VERSION",
    "CallEvent",
    "CallRecord",
    "Direction",
    "EndedBy",
    "Outcome",
    "Recording",
    "Turn",
]

RECORD_VERSION = 1
"""Bumped when a field changes meaning; stored with every record."""

Direction = Literal["inbound", "outbound"]
Outcome = Literal["completed", "transferred", "failed", "refused", "unanswered"]
"""completed: the call ended normally (see ``ended_by``); transferred: handed to a human
(``outcome_detail`` names where); failed: the call could not be served (``outcome_detail``
says why); refused: turned away at capacity; unanswered: an outbound call nobody picked up."""
EndedBy = Literal["caller", "agent", "supervisor", "system"]

Seconds = Annotated[float, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Turn(_Frozen):
    """One utterance: the caller's (as transcribed) or the agent's (as heard, when cut off)."""

    role: Literal["caller", "agent"]
    text: str
    at_s: Seconds
    """When it ended (caller: the final transcript; agent: the reply was committed)."""
    interrupted: bool = False
    latency: dict[str, float] = {}
    """Per-stage seconds of the agent reply (``end_of_utterance``, ``stt``, ``llm_ttft``,
    ``tts_ttfb``, ``e2e``); empty for caller turns."""


class CallEvent(_Frozen):
    """A call-control event: ``barge_in``, ``dtmf``, ``digits_collected``, ``fault``,
    ``fallback``, ``transfer_started``, ``transferred``, ``hang_up``, ... (the names of
    :func:`worker.agent.call_control.call_event`)."""

    kind: Annotated[str, Field(min_length=1, max_length=64)]
    at_s: Seconds
    detail: dict[str, str] = {}


class Recording(_Frozen):
    """The call's stereo recording (caller left, agent right), as written to disk."""

    path: str
    """Relative to the recordings directory."""
    format: Literal["ogg", "flac"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]
    duration_s: Seconds
    silenced: tuple[tuple[int, float, float], ...] = ()
    """Spans (channel, start_s, end_s) silenced because redacted words were said in them:
    channel 0 is the caller, 1 the agent."""


class CallRecord(_Frozen):
    """Everything kept of one call. ``caller`` is masked when the line masks caller IDs;
    ``caller_key`` is a keyed hash of the full number, so ``records purge --caller`` finds a
    caller's calls without the store holding the number."""

    version: int = RECORD_VERSION
    call_id: Annotated[str, Field(min_length=1, max_length=200)]
    direction: Direction = "inbound"
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    called: str | None = None
    caller: str | None = None
    caller_key: str | None = None
    flow: str | None = None
    outcome: Outcome = "completed"
    ended_by: EndedBy | None = None
    outcome_detail: str = ""
    redacted: bool = True
    turns: tuple[Turn, ...] = ()
    events: tuple[CallEvent, ...] = ()
    recording: Recording | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end; None while the call is live."""
        if self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.started_at).total_seconds())

    def ended(self, at: datetime) -> CallRecord:
        """A copy with ``ended_at`` set."""
        return self.model_copy(update={"ended_at": at})
