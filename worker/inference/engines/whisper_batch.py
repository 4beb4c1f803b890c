"""Batched greedy Whisper transcription across streams, on CTranslate2 directly.

One :class:`BatchedWhisper` transcribes many utterances (from many calls) per step: items whose
encoder windows are equal (see :class:`~worker.inference.engines.whisper_features.WindowPolicy`)
are stacked into one ``encode`` call and one greedy ``generate`` call. In the default ``"short"``
mode the short encoder output is followed by the last 2 s (100 positions) of a cached encoding
of 30 s of silence, computed once at load: the stock decoder loops on short contexts (it repeats
the sentence), but given the end of a 30 s window it stops like the padded path. The encoder
(the dominant cost of the padded path) only sees a few seconds, and the decoder attends over a
few hundred positions instead of 1500. faster-whisper's
``WhisperModel.transcribe`` handles one file at a time, so this engine uses its pieces
(feature extractor, tokenizer, token suppression rules) around ``ctranslate2.models.Whisper``.

Greedy decoding makes an item's transcript a function of its own audio only: the window and the
token budget come from the item's length, never from its batch mates, so a batched transcript
equals the same audio transcribed alone (tested). A caller decides what goes into each step;
a cancelled request is simply left out of the next one, so a step (tens of ms on CPU for short
windows) is the unit of cancellation.

Word timings are optional per item (``run_batch(..., words=[...])``): after decoding, the items
that ask for them get one ``Whisper.align`` call on the encoder output already computed (see
:mod:`~worker.inference.engines.whisper_words`); the other items never pay for it.

Not thread-safe by design: one engine thread owns the model and is the only caller.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from worker.inference.engines.whisper_features import (
    FULL_WINDOW_SAMPLES,
    HOP_LENGTH,
    SAMPLE_RATE,
    WindowMode,
    WindowPolicy,
    check_audio,
    log_mel,
)
from worker.inference.engines.whisper_words import words_from_alignment
from worker.inference.words import Word
from worker.models import ModelNotFoundError

__all__ = ["BatchResult", "BatchedWhisper", "GroupTiming", "Transcript", "Word"]

# Whisper's decoder context (prompt included), as in faster-whisper.
_MAX_DECODER_LENGTH = 448
# Token budget per second of window: fast speech runs ~4 tokens/s; the margin lets the longest
# real sentence finish while bounding the hallucination loops Whisper falls into on noise.
_TOKENS_PER_SECOND = 8
_MIN_NEW_TOKENS = 16
# Normalized log-mel value of digital silence in a normal-level utterance (the extractor clamps
# at max - 8 and maps x -> (x + 4) / 4; Piper speech gives -0.52..-0.79). Tail values from -1.0
# to -0.3 gave identical transcripts on the round-trip set, so one cached tail serves all items.
_SILENCE_FEATURE = -0.65
# How much of the end of the silent 30 s window follows a short window's encoder output. What
# stops the decoder is the end-of-window positions, not the amount of silence: the whole
# 1500-position tail and its last 25 or 100 positions gave the padded path's WER, while 10-20 s
# of contiguous context (no window end) still looped on one-word utterances.
_TAIL_POSITIONS = 100
# faster-whisper's defaults for dropping a silent window: high no-speech probability and a
# low average log-probability together.
_NO_SPEECH_THRESHOLD = 0.6
_LOG_PROB_THRESHOLD = -1.0
# faster-whisper's (and openai-whisper's) median filter over the alignment heads' attention.
_ALIGN_FILTER_WIDTH = 7


@dataclass(frozen=True, slots=True)
class Transcript:
    """One item's result."""

    text: str
    window_s: float
    """Encoder window the item was padded to (0.0 for empty audio, which skips the model)."""
    no_speech_prob: float
    avg_logprob: float
    token_ids: tuple[int, ...]
    words: tuple[Word, ...] = ()
    """Word timings (s from the start of the item's audio); only for items that asked."""


@dataclass(frozen=True, slots=True)
class GroupTiming:
    """Cost of one stacked encoder+decoder call, for the scheduler's cost model and metrics."""

    window_s: float
    batch_size: int
    features_s: float
    encode_s: float
    decode_s: float
    align_s: float = 0.0
    """Word alignment of the group's items that asked for words (0.0 when none did)."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Transcripts in input order, plus one timing per window group that ran."""

    transcripts: list[Transcript]
    groups: list[GroupTiming]


class BatchedWhisper:
    """A CTranslate2 Whisper model transcribing batches of 16 kHz mono float32 utterances.

    ``intra_threads`` pins CTranslate2's thread count (0, its "auto", is refused: on a shared
    machine an unpinned engine takes every core). ``window_mode`` selects short windows with
    the silence tail (``"short"``, default), short windows without it (``"short_raw"``, for
    measurement) or the classic padded 30 s path (``"padded30"``); ``window`` overrides the
    whole policy. Loading encodes 30 s of silence once in ``"short"`` mode. ``compute_type``
    defaults to int8 on CPU and float16 on CUDA.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        device: Literal["cpu", "cuda"] = "cpu",
        compute_type: str | None = None,
        intra_threads: int = 2,
        window_mode: WindowMode = "short",
        window: WindowPolicy | None = None,
        language: str = "en",
    ) -> None:
        model_dir = Path(model_dir)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if intra_threads < 1:
            raise ValueError(f"intra_threads must be >= 1 (pinned), got {intra_threads}")
        for name in ("model.bin", "config.json", "tokenizer.json"):
            # Without tokenizer.json faster-whisper would fall back to a hub download.
            if not (model_dir / name).is_file():
                raise ModelNotFoundError(f"Whisper model file not found: {model_dir / name}")
        self.window = window if window is not None else WindowPolicy(mode=window_mode)
        self.device = device
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        try:
            self._model = ctranslate2.models.Whisper(
                str(model_dir),
                device=device,
                compute_type=self.compute_type,
                inter_threads=1,
                intra_threads=intra_threads,
            )
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(f"cannot load the Whisper model in {model_dir}: {exc}") from exc
        multilingual = bool(self._model.is_multilingual)
        self._tokenizer = Tokenizer(
            tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")),
            multilingual,
            task="transcribe" if multilingual else None,
            language=language if multilingual else None,
        )
        if not multilingual and language != "en":
            raise ValueError(f"{model_dir} is an English-only model; language {language!r}")
        # English-only models take <|startoftranscript|><|notimestamps|>; multilingual ones add
        # the language and task tokens between the two (Tokenizer.sot_sequence does both).
        self._prompt: list[int] = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        suppressed = get_suppressed_tokens(self._tokenizer, [-1])
        self._suppress_tokens: list[int] = list(suppressed or ())
        # A private extractor: faster-whisper's ``chunk_length`` argument mutates its instance.
        self._extractor = FeatureExtractor(feature_size=int(self._model.n_mels))
        self._owner: int | None = None
        self._silence_tail: np.ndarray | None = None
        if self.window.mode == "short":
            self._silence_tail = self._encode_silence()

    def _encode_silence(self) -> np.ndarray:
        """Encoder output (positions, d_model) of a 30 s window of silence, kept on the host."""
        frames = FULL_WINDOW_SAMPLES // HOP_LENGTH
        silence = np.full((1, int(self._model.n_mels), frames), _SILENCE_FEATURE, np.float32)
        encoded = self._model.encode(ctranslate2.StorageView.from_array(silence), to_cpu=True)
        return np.array(encoded, dtype=np.float32)[0]

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.is_multilingual)

    def window_s_for(self, num_samples: int) -> float:
        """Encoder window (s) an utterance of ``num_samples`` gets; equal windows share a step."""
        return self.window.window_s(num_samples)

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Transcribe utterances (16 kHz mono float32, each <= 30 s); texts in input order.

        Empty or silent audio gives ``""``. Raises ``ValueError``/``TypeError`` (naming the
        item) before any model work if an item is malformed or longer than 30 s.
        """
        return [t.text for t in self.run_batch(audios).transcripts]

    def run_batch(
        self, audios: Sequence[np.ndarray], words: Sequence[bool] | None = None
    ) -> BatchResult:
        """Like :meth:`transcribe_batch`, with per-item details and per-group timings.

        ``words[i]`` asks for item ``i``'s word timings (:attr:`Transcript.words`); texts are
        the same either way (alignment runs after decoding, on the same encoder output).
        """
        self._check_caller()
        checked = [check_audio(audio, i) for i, audio in enumerate(audios)]
        flags = [False] * len(checked) if words is None else [bool(w) for w in words]
        if len(flags) != len(checked):
            raise ValueError(f"{len(flags)} words flags for {len(checked)} audios")
        results: list[Transcript | None] = [None] * len(checked)
        groups: dict[int, list[int]] = {}
        for i, samples in enumerate(checked):
            if samples.size == 0:
                results[i] = Transcript("", 0.0, 1.0, 0.0, ())
            else:
                groups.setdefault(self.window.window_samples(samples.size), []).append(i)
        timings: list[GroupTiming] = []
        for window_samples, indices in sorted(groups.items()):
            transcripts, timing = self._run_group(
                window_samples, [checked[i] for i in indices], [flags[i] for i in indices]
            )
            timings.append(timing)
            for i, transcript in zip(indices, transcripts, strict=True):
                results[i] = transcript
        done = [r for r in results if r is not None]
        assert len(done) == len(results)
        return BatchResult(done, timings)

    def _run_group(
        self, window_samples: int, items: list[np.ndarray], words: list[bool]
    ) -> tuple[list[Transcript], GroupTiming]:
        window_s = window_samples / SAMPLE_RATE
        t0 = time.perf_counter()
        features = np.stack([log_mel(self._extractor, a, window_samples) for a in items])
        assert features.shape[2] == window_samples // HOP_LENGTH
        t1 = time.perf_counter()
        encoded = self._model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            # Host output when it gets a silence tail, or when align() may need a subset of it.
            to_cpu=self._silence_tail is not None or any(words),
        )
        if self._silence_tail is not None:
            encoded = self._append_silence(encoded)
        t2 = time.perf_counter()
        max_length = self._max_length(window_s)
        outputs = self._model.generate(
            encoded,
            [self._prompt] * len(items),
            beam_size=1,
            num_hypotheses=1,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress_tokens,
        )
        t3 = time.perf_counter()
        transcripts = [self._to_transcript(out, window_s) for out in outputs]
        align_s = 0.0
        if any(words):
            t4 = time.perf_counter()
            transcripts = self._add_words(encoded, items, words, transcripts)
            align_s = time.perf_counter() - t4
        timing = GroupTiming(window_s, len(items), t1 - t0, t2 - t1, t3 - t2, align_s)
        return transcripts, timing

    def _add_words(
        self,
        encoded: ctranslate2.StorageView,
        items: list[np.ndarray],
        words: list[bool],
        transcripts: list[Transcript],
    ) -> list[Transcript]:
        """Align the items that asked for words and have text; the others are returned as is."""
        chosen = [
            i for i, (want, t) in enumerate(zip(words, transcripts, strict=True)) if want and t.text
        ]
        if not chosen:
            return transcripts
        features = encoded
        if len(chosen) < len(items):
            # align() takes the whole batch it is given: hand it only the chosen rows (the
            # encoder output is on the host whenever an item wants words, see _run_group).
            host = np.asarray(encoded)
            features = ctranslate2.StorageView.from_array(np.ascontiguousarray(host[chosen]))
        eot = self._tokenizer.eot
        texts = [[tok for tok in transcripts[i].token_ids if tok < eot] for i in chosen]
        # num_frames is the item's own audio, not its padded window nor the silence tail:
        # the alignment path must end where the speech can end.
        frames = [max(1, items[i].size // HOP_LENGTH) for i in chosen]
        results = self._model.align(
            features,
            self._tokenizer.sot_sequence,
            texts,
            frames,
            median_filter_width=_ALIGN_FILTER_WIDTH,
        )
        out = list(transcripts)
        for i, tokens, result in zip(chosen, texts, results, strict=True):
            timed = words_from_alignment(
                self._tokenizer, tokens, result.alignments, items[i].size / SAMPLE_RATE
            )
            out[i] = replace(transcripts[i], words=timed)
        return out

    def _append_silence(self, encoded: ctranslate2.StorageView) -> ctranslate2.StorageView:
        # The tail is appended on the host: CTranslate2 has no concatenation op, and generate()
        # moves host features to the model's device itself.
        assert self._silence_tail is not None
        head = np.asarray(encoded, dtype=np.float32)
        batch, positions, _ = head.shape
        total = self._silence_tail.shape[0]
        if positions >= total:
            return encoded
        # Windows reaching into the last 2 s get only the positions after their own end.
        tail = self._silence_tail[max(positions, total - _TAIL_POSITIONS) :]
        full = np.concatenate([head, np.broadcast_to(tail, (batch, *tail.shape))], axis=1)
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(full))

    def max_new_tokens(self, window_s: float) -> int:
        """Token budget of an item in a window: 8 per second (at least 16, at most 224)."""
        wanted = max(_MIN_NEW_TOKENS, math.ceil(window_s * _TOKENS_PER_SECOND))
        return min(wanted, _MAX_DECODER_LENGTH // 2)

    def _max_length(self, window_s: float) -> int:
        # CTranslate2's Whisper (src/models/whisper.cc) decodes at most
        # min(max_length / 2, max_length - prompt steps) tokens: a max_length of prompt + N
        # would silently halve the budget, so ask for twice the tokens wanted.
        return min(_MAX_DECODER_LENGTH, 2 * self.max_new_tokens(window_s))

    def _to_transcript(
        self, output: ctranslate2.models.WhisperGenerationResult, window_s: float
    ) -> Transcript:
        tokens = [int(t) for t in output.sequences_ids[0]]
        # scores[0] is the length-normalized log-probability (length_penalty=1); recover the
        # average the way faster-whisper does so its thresholds mean the same thing here.
        avg_logprob = float(output.scores[0]) * len(tokens) / (len(tokens) + 1)
        no_speech_prob = float(output.no_speech_prob)
        text = self._tokenizer.decode(tokens).strip()
        if no_speech_prob > _NO_SPEECH_THRESHOLD and avg_logprob < _LOG_PROB_THRESHOLD:
            text = ""
        return Transcript(text, window_s, no_speech_prob, avg_logprob, tuple(tokens))

    def _check_caller(self) -> None:
        # Enforce the ownership rule instead of documenting it: the model is touched by one
        # thread, and never by a thread running an asyncio loop (model work blocks the loop).
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("BatchedWhisper must run in its engine thread, not on an event loop")
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError("BatchedWhisper is owned by another thread (not thread-safe)")
