"""A transcript end-of-turn detector: is the caller's sentence finished?

livekit-agents asks a turn detector for the probability that the user's turn is over once the
final transcript is in (VAD turn handling). Below the detector's threshold the session waits
``max_endpointing_delay_s`` for more speech instead of ``min_endpointing_delay_s``. That lets
the minimum be short (a fast answer to a finished question) without answering into a pause in
the middle of a sentence, as long as the transcript shows the sentence is not finished.

The signal is the end of Whisper's transcript: a trailing conjunction, preposition, article,
possessive, auxiliary or filler ("the status of my", "I would like to", "and um"), a comma or
an ellipsis (Whisper writes "..." for speech that trails off). It is cheap and runs on the
event loop (a string check, no model). English only: for other languages the detector says so
and the session uses ``min_endpointing_delay_s`` alone.
"""

from __future__ import annotations

import re

from livekit.agents.llm import ChatContext, ChatMessage

__all__ = ["TranscriptEndOfTurn", "sentence_unfinished"]

# Words that end an English sentence only in rare constructions. Object pronouns, auxiliaries
# ("Yes, I do.") and "that" ("I want that") are left out on purpose. "in" and "on" are in
# although "I can't log in." ends with one: waiting for more costs at most
# max_endpointing_delay_s, answering into a pause costs the caller's sentence, and Whisper tiny
# hears a trailing "of" as "on" ("the price of ..." -> "the price on.").
_DANGLING = frozenset(
    """
    a an the my your our their his her its some any every
    and or but because if when while than as nor
    to of for with about from at by in on into onto between
    i we he she they
    um uh er erm
    """.split()
)
_WORD = re.compile(r"[a-z']+")
_UNLIKELY = 0.05
_LIKELY = 0.95
_THRESHOLD = 0.5


def sentence_unfinished(text: str) -> bool:
    """True when ``text`` ends mid-sentence: a comma, dash, colon or ellipsis, or a word that
    hardly ever ends an English sentence. A question mark means finished ("What can you help me
    with?")."""
    stripped = text.strip()
    if not stripped or stripped.endswith("?"):
        return False
    if stripped.endswith(("...", "…", ",", "-", "—", ":", ";")):
        return True
    words = _WORD.findall(stripped.lower())
    return bool(words) and words[-1] in _DANGLING


def _last_user_text(chat_ctx: ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if isinstance(item, ChatMessage) and item.role == "user":
            return item.text_content or ""
    return ""


class TranscriptEndOfTurn:
    """livekit-agents turn detector (its ``_TurnDetector`` protocol) over the final transcript."""

    def __init__(self, language: str = "en") -> None:
        self._language = language.split("-")[0].lower()

    @property
    def model(self) -> str:
        return "voicestack-transcript-eot"

    @property
    def provider(self) -> str:
        return "voicestack"

    async def unlikely_threshold(self, language: str | None) -> float | None:
        return _THRESHOLD

    async def supports_language(self, language: str | None) -> bool:
        lang = (language or self._language).split("-")[0].lower()
        return lang == "en"

    async def predict_end_of_turn(
        self,
        chat_ctx: ChatContext,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the protocol's signature; never waits)
    ) -> float:
        """Low when the caller's newest transcript stops mid-sentence, high otherwise."""
        return _UNLIKELY if sentence_unfinished(_last_user_text(chat_ctx)) else _LIKELY
