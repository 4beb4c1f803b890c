"""Audio checks, encoder windows and log-mel features for the batched Whisper engine.

Pure numpy, no model: everything here is cheap and can be unit-tested without CTranslate2.

Why windows: CTranslate2's Whisper encoder accepts inputs shorter than the classic 30 s (the
positional embedding is sliced), and encoder cost grows with the window, so a 3 s utterance
encoded in a 5 s window costs a fraction of the padded 30 s path. The window of an item depends
only on that item's own length (never on what else is in the batch): the encoder has no padding
mask, so padding changes its output, and a transcript must not depend on which other calls
happened to share the batch. Items with equal windows are stacked into one encoder call.

Modes (measured in docs/whisper-batching.md):
- ``"short"``: short encoder window, followed by the encoder output of the last 2 s of a 30 s
  window of silence (cached) before decoding. The decoder of a stock Whisper model was trained on
  30 s windows; given a short one it loops (repeats the sentence until the token budget runs
  out). Shown the end of a 30 s window, it stops like the padded path.
- ``"short_raw"``: short encoder window decoded as is (cheapest, but loops on tiny.en).
- ``"padded30"``: the classic path, every item padded to 30 s before the encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

__all__ = [
    "FULL_WINDOW_SAMPLES",
    "HOP_LENGTH",
    "MAX_AUDIO_S",
    "SAMPLE_RATE",
    "WindowMode",
    "WindowPolicy",
    "check_audio",
    "log_mel",
]

SAMPLE_RATE = 16_000
"""Whisper's input rate; callers resample before they get here."""
HOP_LENGTH = 160
"""Samples per mel frame (10 ms)."""
MAX_AUDIO_S = 30.0
"""Whisper's context: longer audio would need chunking, which the server never needs (it limits
utterances), so it is refused instead of silently truncated."""
_MAX_SAMPLES = int(MAX_AUDIO_S * SAMPLE_RATE)
FULL_WINDOW_SAMPLES = _MAX_SAMPLES
"""The classic 30 s window, in samples."""

WindowMode = Literal["short", "short_raw", "padded30"]


def check_audio(audio: object, index: int = 0) -> np.ndarray:
    """Validate one utterance and return it as contiguous float32.

    Raises ``TypeError`` for a non-array or a non-float dtype (int16 PCM must be scaled to
    [-1, 1] first) and ``ValueError`` for a wrong shape, non-finite samples or more than 30 s.
    """
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"audio[{index}]: expected a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"audio[{index}]: expected mono 1-D samples, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(
            f"audio[{index}]: expected float samples in [-1, 1] at 16 kHz, got dtype "
            f"{audio.dtype} (scale int16 PCM by 1/32768 first)"
        )
    if audio.size > _MAX_SAMPLES:
        raise ValueError(
            f"audio[{index}]: {audio.size / SAMPLE_RATE:.2f} s is longer than Whisper's "
            f"{MAX_AUDIO_S:.0f} s window; split the utterance first"
        )
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError(f"audio[{index}]: contains NaN or infinite samples")
    return samples


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """Maps an utterance length to the encoder window it is padded to.

    ``mode="padded30"`` is the classic Whisper path (every item padded to 30 s); ``"short"`` and
    ``"short_raw"`` round ``length + tail_s`` up to a multiple of ``step_s``, at least ``min_s``,
    at most 30 s (they differ in decoding, see the module docstring).
    The tail keeps some trailing silence after the last word, as the model saw in training,
    so the end of an utterance is not clipped at the window edge.
    """

    mode: WindowMode = "short"
    # Below ~5 s even the silence-tailed path misreads one-word utterances ("Goodbye." ->
    # "Bye bye." in a 3 s window); 5 s was clean on the round-trip set.
    min_s: float = 5.0
    step_s: float = 1.0
    tail_s: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("short", "short_raw", "padded30"):
            raise ValueError(
                f"window mode must be 'short', 'short_raw' or 'padded30', got {self.mode!r}"
            )
        if not 2.0 <= self.min_s <= MAX_AUDIO_S:
            # CTranslate2 tells features from encoder outputs by shape: an encoder output of
            # exactly n_mels (80) positions, a 1.6 s window, would be encoded a second time.
            raise ValueError(f"min_s must be in [2, {MAX_AUDIO_S:.0f}], got {self.min_s}")
        if self.step_s <= 0.0 or abs(self.step_s * 100 - round(self.step_s * 100)) > 1e-6:
            # A step must be whole 10 ms frames so windows are whole frames.
            raise ValueError(f"step_s must be a positive multiple of 0.01, got {self.step_s}")
        if self.tail_s < 0.0:
            raise ValueError(f"tail_s must be >= 0, got {self.tail_s}")

    def window_samples(self, num_samples: int) -> int:
        """Encoder window in samples (a whole number of mel frames) for an utterance."""
        if num_samples < 0 or num_samples > _MAX_SAMPLES:
            raise ValueError(f"utterance length {num_samples} samples is outside [0, 30 s]")
        if self.mode == "padded30":
            return _MAX_SAMPLES
        wanted_s = max(self.min_s, num_samples / SAMPLE_RATE + self.tail_s)
        window_s = min(MAX_AUDIO_S, math.ceil(round(wanted_s / self.step_s, 9)) * self.step_s)
        frames = round(window_s * SAMPLE_RATE / HOP_LENGTH)
        return frames * HOP_LENGTH

    def window_s(self, num_samples: int) -> float:
        """Encoder window in seconds for an utterance of ``num_samples`` samples."""
        return self.window_samples(num_samples) / SAMPLE_RATE


def log_mel(extractor: FeatureExtractor, audio: np.ndarray, window_samples: int) -> np.ndarray:
    """Log-mel features of ``audio`` zero-padded to ``window_samples``: shape (n_mels, frames).

    Padding is applied to the waveform before the spectrogram, as original Whisper does for
    its 30 s windows, so the padded frames hold the model's usual "silence" value relative to
    the utterance's own loudness. ``extractor`` must be a private instance: faster-whisper's
    ``chunk_length`` argument mutates it, and we never pass that argument.
    """
    if audio.size > window_samples:
        raise ValueError(f"audio of {audio.size} samples does not fit a {window_samples} window")
    padded = np.zeros(window_samples, dtype=np.float32)
    padded[: audio.size] = audio
    features = extractor(padded, padding=0)
    frames = window_samples // HOP_LENGTH
    # The extractor drops the last STFT frame, so a window of whole frames maps to exactly
    # window / hop frames; slice anyway so the stacked batch shape can never drift.
    return np.asarray(features[:, :frames], dtype=np.float32)
