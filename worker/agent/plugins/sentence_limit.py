"""Cut a streamed reply after a number of sentences.

A phone answer is one or two short sentences; a small model asked for that still rambles on
(measured: 10-20 s answers with ``max_tokens`` 96). Everything past the limit would cost LLM
decode, Piper synthesis and the caller's patience, and would then be talked over. The LLM stream
stops at the limit, and closing its socket cancels the generation on the server (its slot and KV
sequence are freed).

A sentence ends at ``.``, ``!`` or ``?`` (closing quotes or brackets allowed) followed by
whitespace, so "3.5" or "e.g." inside a word never ends one; the boundary is known when the
whitespace after the mark arrives, one token later.
"""

from __future__ import annotations

import re

__all__ = ["SentenceLimit"]

_BOUNDARY = re.compile(r"[.!?][\"')\]]*(?=\s)")


class SentenceLimit:
    """Feed streamed text pieces; get back what may still be said and whether to stop."""

    def __init__(self, max_sentences: int) -> None:
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        self._max = max_sentences
        self._text = ""
        self._sent = 0  # characters of _text already let through
        self.done = False

    def feed(self, piece: str) -> str:
        """The part of ``piece`` within the limit; sets :attr:`done` once the limit is hit."""
        if self.done:
            return ""
        self._text += piece
        ends = [m.end() for m in _BOUNDARY.finditer(self._text)]
        cut = len(self._text)
        if len(ends) >= self._max:
            cut = ends[self._max - 1]
            self.done = True
        out = self._text[self._sent : max(cut, self._sent)]
        self._sent = max(cut, self._sent)
        return out
