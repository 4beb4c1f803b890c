"""Word timings of a transcript: the one :class:`Word` type, and its wire form.

The engines produce words, the STT stream sends them in ``final`` frames as
``[[text, start_s, end_s], ...]`` (docs/inference-protocol.md), and clients parse them back with
:func:`words_from_wire`. Pure Python, no model: the agent side imports it without the engines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["Word", "words_from_wire", "words_to_wire"]


class Word(NamedTuple):
    """One word of a transcript and when it was spoken.

    ``text`` is the word as the transcript writes it (attached punctuation included, no
    surrounding spaces); ``start_s``/``end_s`` are seconds from the start of the transcribed
    audio. Cross-attention alignment is approximate (typically within ~0.1-0.2 s): pad the span
    before silencing it.
    """

    text: str
    start_s: float
    end_s: float


def words_to_wire(words: Iterable[Word]) -> list[list[str | float]]:
    """``[[text, start_s, end_s], ...]`` with times rounded to milliseconds."""
    return [[w.text, round(w.start_s, 3), round(w.end_s, 3)] for w in words]


def words_from_wire(value: object) -> tuple[Word, ...]:
    """Parse the wire form back; ``ValueError`` names the first malformed entry."""
    if not isinstance(value, list):
        raise ValueError(f"words must be a list, got {type(value).__name__}")
    words = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise ValueError(f"words[{i}] must be [text, start_s, end_s], got {item!r}")
        start, end = item[1], item[2]
        # bool is an int subclass: a JSON true is no time.
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (start, end)):
            raise ValueError(f"words[{i}]: times must be numbers, got {item!r}")
        if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= end):
            raise ValueError(f"words[{i}]: need 0 <= start_s <= end_s, got {item!r}")
        words.append(Word(item[0], float(start), float(end)))
    return tuple(words)
