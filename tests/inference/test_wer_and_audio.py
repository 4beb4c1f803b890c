"""Pure helpers: word error rate and resampling."""

import numpy as np
import pytest

from worker.inference.audio import resample
from worker.inference.wer import normalize_words, word_error_rate


def test_normalization_drops_case_and_punctuation() -> None:
    assert normalize_words("Hello, World! It's 3 o'clock.") == [
        "hello",
        "world",
        "it's",
        "3",
        "o'clock",
    ]


def test_wer_counts_substitutions_insertions_deletions() -> None:
    assert word_error_rate("the cat sat", "the cat sat") == 0.0
    assert word_error_rate("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "the cat") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "the big cat sat down") == pytest.approx(2 / 3)
    assert word_error_rate("a b", "") == 1.0
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "noise") == 1.0


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spectrum))])


def test_resample_keeps_length_ratio_and_frequency() -> None:
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert out.dtype == np.float32
    assert out.size == 16000
    assert _dominant_hz(out, 16000) == pytest.approx(440, abs=2)
    # The amplitude survives away from the edges.
    assert np.max(np.abs(out[1000:-1000])) == pytest.approx(1.0, abs=0.02)


def test_downsampling_removes_what_the_new_rate_cannot_hold() -> None:
    t = np.arange(22050) / 22050
    high = np.sin(2 * np.pi * 10_000 * t).astype(np.float32)  # above 8 kHz Nyquist
    out = resample(high, 22050, 16000)
    assert np.sqrt(np.mean(out[500:-500] ** 2)) < 0.05


def test_resample_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        resample(np.zeros(10), 0, 16000)
    with pytest.raises(ValueError):
        resample(np.zeros((2, 10)), 22050, 16000)
