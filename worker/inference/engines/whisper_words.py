"""Word timings from Whisper's cross-attention alignment (pure: no model, no I/O).

``ctranslate2.models.Whisper.align`` runs the decoder once over the transcript's tokens, takes
the cross-attention of the model's alignment heads, median-filters it and finds the cheapest
monotonic path through it (dynamic time warping): for each text token, the encoder positions
it attends to. This module turns that path into :class:`~worker.inference.words.Word` spans,
the same mechanism faster-whisper's ``word_timestamps`` uses:

- a token starts where the path first reaches it; a word spans from its first token's start to
  the next word's start (the end-of-text row takes the trailing silence);
- tokens are grouped into words by faster-whisper's ``Tokenizer.split_to_word_tokens``
  (a new word at a leading space or a punctuation mark);
- punctuation joins its word (``"Hello,"``); a trailing mark's span extends the word's end,
  because the path often hands the tail of the word's sound to the mark (``"Yes"`` 0-0.22 s,
  ``"."`` 0.22-0.58 s), and these spans are used to silence words: covering a little pause is
  harmless, missing the end of a digit is not;
- DTW has to put silence somewhere: before the first word it goes into that word (or into the
  first word after a sentence end), after a sentence into its final mark. Such a span longer
  than twice the median word (at most 1.4 s) is cut back to that length, counted from the
  word's end (a word) or from the mark's start (a mark).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
from faster_whisper.tokenizer import Tokenizer

from worker.inference.engines.whisper_features import HOP_LENGTH, SAMPLE_RATE
from worker.inference.words import Word

__all__ = ["TOKENS_PER_SECOND", "words_from_alignment"]

TOKENS_PER_SECOND = SAMPLE_RATE / (HOP_LENGTH * 2)
"""Encoder positions per second (the encoder's stride-2 convolution halves the mel frames)."""

# Punctuation written before a word ("¿Qué", '"Hi') joins the next word; any other joins the
# previous one.
_OPENING = "\"'“¿([{-¡«"
_SENTENCE_END = ".。!！?？"
# faster-whisper's bound on the median word duration used by the long-word rule.
_MAX_MEDIAN_S = 0.7


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and all(c in string.punctuation or c in _OPENING for c in stripped)


def words_from_alignment(
    tokenizer: Tokenizer,
    tokens: Sequence[int],
    alignment: Sequence[tuple[int, int]],
    duration_s: float,
) -> tuple[Word, ...]:
    """Words of ``tokens`` (text tokens, no special ones) timed by ``alignment``.

    ``alignment`` is ``WhisperAlignmentResult.alignments``: (text index, encoder position)
    pairs of the DTW path, text index ``len(tokens)`` being the end-of-text token. Times are
    clamped to ``[0, duration_s]`` (the item's real audio, not its padded window).
    """
    if not tokens or not alignment:
        return ()
    texts, groups = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
    path = np.asarray(alignment, dtype=np.int64)
    first = np.ones(len(path), dtype=bool)
    first[1:] = np.diff(path[:, 0]) != 0
    # starts[i]: when the path reaches text row i (token i; the last one is end-of-text).
    starts = path[first, 1] / TOKENS_PER_SECOND
    if len(starts) != len(tokens) + 1:
        return ()  # not a path over these tokens: no timings rather than wrong ones
    bounds = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
    spans = [
        (text, float(starts[bounds[k]]), float(starts[bounds[k + 1]]))
        for k, text in enumerate(texts)
        if groups[k] and groups[k][0] < tokenizer.eot  # the end-of-text row is no word
    ]
    words = _merge_punctuation(_shorten_after_silence(spans))
    timed = []
    for text, start, end in words:
        start = min(max(0.0, start), duration_s)
        end = min(max(start, end), duration_s)
        timed.append(Word(text.strip(), round(start, 3), round(end, 3)))
    return tuple(timed)


def _shorten_after_silence(spans: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    durations = [e - s for t, s, e in spans if e > s and not _is_punctuation(t)]
    if not durations:
        return spans
    longest = 2 * min(_MAX_MEDIAN_S, float(np.median(durations)))
    out = []
    after_pause = True  # the start of the audio counts as a pause
    for text, start, end in spans:
        if _is_punctuation(text):
            out.append((text, start, min(end, start + longest)))
            after_pause = after_pause or text.strip()[-1] in _SENTENCE_END
            continue
        if after_pause and end - start > longest:
            start = end - longest
        out.append((text, start, end))
        after_pause = text.strip()[-1] in _SENTENCE_END
    return out


def _merge_punctuation(spans: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    carry = ""  # opening punctuation waiting for its word
    for text, start, end in spans:
        if _is_punctuation(text):
            mark = text.strip()
            if (mark[0] in _OPENING and text.startswith(" ")) or not out:
                carry += mark
            else:
                prev_text, prev_start, prev_end = out[-1]
                out[-1] = (prev_text + mark, prev_start, max(prev_end, end))
            continue
        if carry:
            text = " " + carry + text.lstrip()
            carry = ""
        out.append((text, start, end))
    if carry:  # only punctuation after the last word (or no word at all)
        if out:
            prev_text, prev_start, prev_end = out[-1]
            out[-1] = (prev_text + carry, prev_start, prev_end)
        else:
            out.append((carry, spans[0][1], spans[-1][2]))
    return out
