"""Deterministic call-control intents in a caller's final transcript.

The bundled SmolLM2-135M does not call tools, so asking for a person and saying goodbye are
recognised by phrase rules that work with any model (and run before the model is asked, so a
model can never talk its way around them). Matching is on whole words, case-insensitive, after
dropping punctuation: Whisper writes "Can I talk to a person?" and "can i talk to a person".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["asks_for_person", "says_goodbye"]

_ASKS = (
    "talk to",
    "talk with",
    "speak to",
    "speak with",
    "connect me",
    "transfer me",
    "put me through",
    "get me",
    "i want",
    "i need",
    "i'd like",
    "i would like",
    "can i have",
)
_WORD = re.compile(r"[a-z0-9']+")
# A goodbye is the end of a short closing turn, not a story that mentions the word.
_MAX_GOODBYE_WORDS = 10
# "Agent." or "A person, please." alone asks for a person too.
_MAX_BARE_REQUEST_WORDS = 4


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _contains(words: list[str], phrase: str) -> bool:
    needle = _words(phrase)
    n = len(needle)
    return n > 0 and any(words[i : i + n] == needle for i in range(len(words) - n + 1))


def asks_for_person(text: str, phrases: Iterable[str]) -> bool:
    """True when ``text`` asks to be put through to a person (one of ``phrases``)."""
    words = _words(text)
    if len(words) <= _MAX_BARE_REQUEST_WORDS:
        # "Agent." / "Human, please.": the phrase without its article is enough.
        return any(_contains(words, _bare(p)) for p in phrases)
    if not any(_contains(words, ask) for ask in _ASKS):
        return False
    # After an ask the article does not matter: Whisper writes "talk to the person" for "a".
    return any(_contains(words, p) or _contains(words, _bare(p)) for p in phrases)


def _bare(phrase: str) -> str:
    words = _words(phrase)
    return " ".join(words[1:] if len(words) > 1 and words[0] in ("a", "an", "the") else words)


def says_goodbye(text: str, phrases: Iterable[str]) -> bool:
    """True when ``text`` is a short closing turn that contains one of ``phrases``."""
    words = _words(text)
    if not words or len(words) > _MAX_GOODBYE_WORDS:
        return False
    return any(_contains(words, p) for p in phrases)
