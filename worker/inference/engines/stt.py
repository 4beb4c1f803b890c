"""Speech to text with faster-whisper (CTranslate2). No asyncio here: an engine thread owns it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from worker.inference.words import Word

__all__ = ["SttEngine", "pcm16_to_float32"]

SAMPLE_RATE = 16_000


def pcm16_to_float32(pcm: bytes) -> np.ndarray:
    """Signed 16-bit little-endian PCM to float32 samples in [-1, 1)."""
    if len(pcm) % 2:
        raise ValueError("16-bit PCM must have an even number of bytes")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class SttEngine:
    """A Whisper model held by one thread; :meth:`transcribe` is a pure compute call."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: Literal["cpu", "cuda"],
        compute_type: str,
        threads: int,
        language: str,
    ) -> None:
        from faster_whisper import WhisperModel

        self.language = language
        # cpu_threads is CTranslate2's intra_threads (its default is 4, too many for 2 cores);
        # local_files_only: a model directory never falls back to the hub.
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
        # ("en",) for English-only models such as tiny.en.
        self.supported_languages: frozenset[str] = frozenset(self._model.supported_languages)
        if language not in self.supported_languages:
            raise ValueError(
                f"stt.language {language!r} is not supported by {model_dir} "
                f"(supported: {', '.join(sorted(self.supported_languages))})"
            )

    def _segments(self, audio: np.ndarray, language: str | None, *, words: bool) -> Any:
        """faster-whisper's lazy segments: one greedy pass (temperature fallback would
        re-decode slow utterances several times). Word timings need timestamp mode: with
        ``without_timestamps=True`` faster-whisper seeks to the last word's end and decodes the
        tail again (tiny.en then hallucinates a sentence)."""
        segments, _info = self._model.transcribe(
            audio.astype(np.float32, copy=False),
            language=language or self.language,
            beam_size=1,
            without_timestamps=not words,
            word_timestamps=words,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return segments

    def transcribe_words(
        self, audio: np.ndarray, language: str | None = None
    ) -> tuple[str, tuple[Word, ...]]:
        """Like :meth:`transcribe`, with word timings (s from the start of ``audio``) from
        faster-whisper's ``word_timestamps`` (the same cross-attention alignment as the batched
        engine's)."""
        if audio.size == 0:
            return "", ()
        texts: list[str] = []
        words: list[Word] = []
        for seg in self._segments(audio, language, words=True):  # decodes here, in this thread
            texts.append(seg.text.strip())
            words.extend(
                Word(w.word.strip(), round(w.start, 3), round(w.end, 3))
                for w in seg.words or ()
                if w.word.strip()
            )
        return " ".join(t for t in texts if t).strip(), tuple(words)

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> str:
        """Transcribe 16 kHz mono float32 audio; returns the text ('' for silence or no audio).
        ``language`` overrides the configured one for this call."""
        if audio.size == 0:
            return ""
        # The segments are lazy: decoding happens while iterating, which is why this runs
        # here, in the engine thread, and never on the event loop.
        segments = self._segments(audio, language, words=False)
        return " ".join(seg.text.strip() for seg in segments).strip()
