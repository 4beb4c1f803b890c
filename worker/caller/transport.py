"""The one interface both caller transports implement (SIP via baresip, WebRTC via the livekit
SDK): play the caller script from call answer, record what comes back on the same clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from worker.caller.audio import Pcm
from worker.caller.utterances import CallerScript

__all__ = ["CallRecording", "CallerTransport", "HangUp"]


@dataclass(frozen=True)
class HangUp:
    """Hang up early: ``after_answer_s`` seconds after the agent starts answering utterance
    ``turn`` (1-based). Used to test that a caller leaving mid-answer frees the agent's work."""

    turn: int
    after_answer_s: float = 0.6


@dataclass
class CallRecording:
    """What the caller heard, from call answer (t=0), and how the call went."""

    samples: Pcm
    sample_rate: int
    transport: str
    schedule_offset_s: float = 0.0
    """Add to the script's utterance times to place them on the recording's clock (the time
    from call answer to the first caller sample leaving)."""
    notes: list[str] = field(default_factory=list)
    room: str = ""
    hung_up_early: bool = False


class CallerTransport(Protocol):
    """Places one call, plays ``script`` from answer, returns the recording."""

    name: str

    async def call(self, script: CallerScript, *, hang_up: HangUp | None = None) -> CallRecording:
        """Run the call to the end of the script (or until ``hang_up``) and hang up."""
        ...
