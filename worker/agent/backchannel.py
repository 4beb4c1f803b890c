"""What a final transcript means for the turn when the caller spoke over the agent.

livekit-agents pauses the agent's audio as soon as the caller has spoken over it for
``turn.min_interruption_s``; the next non-empty final transcript then abandons the answer and
starts a new turn, while an empty one lets the paused answer resume after
``turn.false_interruption_timeout_s``. Callers say "mm-hmm" or "okay" over an agent to show they
are listening, and cough; neither should cost them the answer. :class:`OverlapFilter` turns such
finals into empty ones before the session sees them:

- a transcript with no words (Whisper's ``(coughing)``, ``[BLANK_AUDIO]``, bare punctuation)
  is never a turn, overlap or not;
- a transcript made only of backchannel phrases is dropped when the caller began speaking
  while the agent was speaking. Said into silence ("Okay." as an answer) it is a turn.

Anything else, one word included ("Stop.", "Wait."), is a real interruption.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["OverlapFilter", "words_of"]

_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*")
_CHUNKS = re.compile(r"[,.!?;:]+")
_NOT_LETTERS = re.compile(r"[^a-z' ]+")


def words_of(text: str) -> str:
    """``text`` lower-cased with annotations and punctuation gone (hyphenated words joined)."""
    text = _BRACKETED.sub(" ", text.lower()).replace("-", "")
    return " ".join(_NOT_LETTERS.sub(" ", text).split())


def _key(phrase: str) -> str:
    return words_of(phrase).replace(" ", "")


class OverlapFilter:
    """Tracks whether the caller's current speech began over the agent and filters finals."""

    def __init__(self, backchannels: Iterable[str]) -> None:
        self._backchannels = frozenset(k for p in backchannels if (k := _key(p)))
        self._overlap = False

    def user_started_speaking(self, *, agent_speaking: bool) -> None:
        """The caller's VAD start of speech; ``agent_speaking`` as the session saw it then."""
        self._overlap = agent_speaking

    def is_backchannel(self, text: str) -> bool:
        """Every comma- or period-separated part of ``text`` is a backchannel phrase."""
        parts = [_key(p) for p in _CHUNKS.split(_BRACKETED.sub(" ", text))]
        parts = [p for p in parts if p]
        return bool(parts) and all(p in self._backchannels for p in parts)

    def final_text(self, text: str) -> str:
        """The transcript the session should see: ``""`` for no words, or for a backchannel
        said over the agent; ``text`` otherwise."""
        if not words_of(text):
            return ""
        if self._overlap and self.is_backchannel(text):
            return ""
        return text
