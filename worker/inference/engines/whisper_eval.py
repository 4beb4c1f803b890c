"""A Piper -> Whisper round-trip set for measuring the Whisper engines: known sentences spoken by
the bundled Piper voice, resampled to 16 kHz, and a word error rate.

Used by the batched-engine tests and ``scripts/whisper_window_wer.py``. No network: the voice is
a local ONNX file and synthesis runs in onnxruntime with a pinned thread count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ROUNDTRIP_SENTENCES",
    "normalize_words",
    "resample_fft",
    "synthesize_16k",
    "word_error_rate",
]

ROUNDTRIP_SENTENCES: tuple[str, ...] = (
    "Thank you for calling, how can I help you today?",
    "I would like to check the status of my order.",
    "My internet connection has been dropping every evening this week.",
    "Can you transfer me to someone in the billing department please?",
    "Yes.",
    "The package was supposed to arrive on Monday but it never came.",
    "Please cancel my subscription and send me a confirmation email.",
    "I forgot my password and the reset link does not work.",
    "What are your opening hours on the weekend?",
    "Could you repeat that more slowly?",
)
"""Call-center style sentences from one word to about five seconds, without digits (Whisper
writes numbers as digits, which would count as errors against spelled-out references)."""


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes kept: "don't" is one word)."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits (substitutions, insertions, deletions) / reference words."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = 0
    words = 0
    for ref_text, hyp_text in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_words(ref_text), normalize_words(hyp_text)
        words += len(ref)
        # Levenshtein distance over words, one row at a time.
        row = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, start=1):
            prev_diag, row[0] = row[0], i
            for j, h in enumerate(hyp, start=1):
                prev_diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev_diag + (r != h))
        edits += row[-1]
    if words == 0:
        raise ValueError("references contain no words")
    return edits / words


def resample_fft(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling of a whole clip by truncating (or zero-extending) its spectrum.

    Exact for the clip treated as periodic; the spectrum cut is the anti-aliasing filter that
    plain interpolation lacks when going down from 22.05 kHz.
    """
    x = np.asarray(samples, dtype=np.float64)
    if src_rate == dst_rate or x.size == 0:
        return x.astype(np.float32)
    n_out = round(x.size * dst_rate / src_rate)
    spectrum = np.fft.rfft(x)
    out = np.fft.irfft(spectrum[: n_out // 2 + 1], n=n_out) * (n_out / x.size)
    return out.astype(np.float32)


def synthesize_16k(texts: Sequence[str], voice_onnx: Path, *, threads: int = 2) -> list[np.ndarray]:
    """Speak each text with a Piper voice; float32 16 kHz mono clips in [-1, 1].

    Noise scales are zero so the clips (and hence measured WERs) are reproducible.
    """
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig

    config_path = voice_onnx.with_name(voice_onnx.name + ".json")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    voice = PiperVoice(
        session=onnxruntime.InferenceSession(
            str(voice_onnx), sess_options=options, providers=["CPUExecutionProvider"]
        ),
        config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
    )
    syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    clips = []
    for text in texts:
        chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=syn)]
        if not chunks:
            raise ValueError(f"Piper produced no audio for {text!r}")
        audio = np.concatenate(chunks)
        clips.append(resample_fft(audio, voice.config.sample_rate, 16_000))
    return clips
