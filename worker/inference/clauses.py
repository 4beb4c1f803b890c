"""Split streamed text into clauses that TTS can speak as soon as they are complete.

Speaking the first clause instead of the whole sentence is what keeps time-to-first-audio low;
splitting too eagerly makes prosody choppy, so commas only split once a clause is long enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["first_chunk", "split_clauses"]

# A clause ends at sentence or clause punctuation followed by whitespace: a "." at the very end
# of the buffer may still be "3." of "3.5" in a token stream, so it waits for more text or flush.
_BOUNDARY = re.compile(r"[.!?;:]+[\"')\]]*(?=\s)|,(?=\s)|\n")
_ABBREVIATIONS = frozenset(
    {
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "st.",
        "prof.",
        "sr.",
        "jr.",
        "vs.",
        "etc.",
        "e.g.",
        "i.e.",
        "no.",
        "approx.",
    }
)


def _ends_with_abbreviation(text: str) -> bool:
    words = text.rsplit(None, 1)
    return bool(words) and words[-1].lower() in _ABBREVIATIONS


_WORD_END = re.compile(r"\S(?=\s)")


def _clause_ends(text: str, min_comma_chars: int) -> Iterator[int]:
    """End offsets in ``text`` of the clauses :func:`split_clauses` describes, in order."""
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        candidate = text[start:end]
        mark = match.group(0)
        if mark == "," and len(candidate.strip()) < min_comma_chars:
            continue
        if mark.startswith(".") and _ends_with_abbreviation(candidate):
            continue
        yield end
        start = end


def first_chunk(text: str, max_words: int) -> tuple[str, str] | None:
    """The first chunk of a reply, cut early for a fast first audio: up to the first clause
    mark (a comma too, however short the clause) or after ``max_words`` complete words,
    whichever comes first; ``None`` while neither is there yet. Returns ``(chunk, rest)``."""
    cut = next(_clause_ends(text, min_comma_chars=0), None)
    ends = [m.end() for m in _WORD_END.finditer(text)]
    if len(ends) >= max_words and (cut is None or ends[max_words - 1] < cut):
        cut = ends[max_words - 1]
    if cut is None or not text[:cut].strip():
        return None
    return text[:cut].strip(), text[cut:].lstrip()


def split_clauses(
    text: str, *, min_comma_chars: int = 24, final: bool = False
) -> tuple[list[str], str]:
    """Return ``(complete clauses, remainder)`` for ``text``.

    Clauses end at ``. ! ? ; :`` or a newline followed by whitespace, or at a comma once the
    clause has at least ``min_comma_chars`` characters. With ``final=True`` the remainder is
    returned as a last clause. Clauses are stripped; empty ones are dropped.
    """
    clauses: list[str] = []
    start = 0
    for end in _clause_ends(text, min_comma_chars):
        if text[start:end].strip():
            clauses.append(text[start:end].strip())
        start = end
    remainder = text[start:]
    if final:
        if remainder.strip():
            clauses.append(remainder.strip())
        remainder = ""
    else:
        remainder = remainder.lstrip()
    return clauses, remainder
