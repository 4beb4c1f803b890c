"""Window policy, audio checks and features of the batched Whisper engine (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from worker.inference.engines.whisper_eval import corpus_word_error_rate
from worker.inference.engines.whisper_features import (
    HOP_LENGTH,
    WindowPolicy,
    check_audio,
    log_mel,
)

SR = 16_000


def test_short_windows_round_up_with_tail_and_minimum() -> None:
    policy = WindowPolicy(mode="short", min_s=5.0, step_s=1.0, tail_s=0.5)
    assert policy.window_s(0) == 5.0
    assert policy.window_s(int(2.0 * SR)) == 5.0
    assert policy.window_s(int(4.5 * SR)) == 5.0
    assert policy.window_s(int(4.6 * SR)) == 6.0
    assert policy.window_s(int(12.2 * SR)) == 13.0
    assert policy.window_s(30 * SR) == 30.0  # capped, never past Whisper's context


def test_windows_are_whole_frames_and_fit_the_audio() -> None:
    policy = WindowPolicy(mode="short", min_s=2.0, step_s=0.25, tail_s=0.1)
    for n in range(0, 30 * SR, 7919):
        window = policy.window_samples(n)
        assert window % HOP_LENGTH == 0
        assert n <= window <= 30 * SR


def test_padded30_is_always_thirty_seconds() -> None:
    policy = WindowPolicy(mode="padded30")
    assert {policy.window_s(n) for n in (0, SR, 29 * SR)} == {30.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "long"},
        {"min_s": 0.0},
        {"min_s": 1.6},
        {"min_s": 31.0},
        {"step_s": 0.0},
        {"step_s": 0.005},
        {"tail_s": -1.0},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WindowPolicy(**kwargs)  # type: ignore[arg-type]


def test_check_audio_accepts_float_and_refuses_bad_input() -> None:
    out = check_audio(np.zeros(10, dtype=np.float64))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(TypeError, match="numpy array"):
        check_audio([0.0, 0.1])
    with pytest.raises(TypeError, match="int16"):
        check_audio(np.zeros(10, dtype=np.int16))
    with pytest.raises(ValueError, match="mono"):
        check_audio(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        check_audio(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match=r"audio\[3\].*30 s"):
        check_audio(np.zeros(30 * SR + 1, dtype=np.float32), index=3)


def test_log_mel_pads_the_waveform_to_the_window() -> None:
    extractor = FeatureExtractor(feature_size=80)
    rng = np.random.default_rng(1)
    tone = (0.3 * np.sin(np.arange(SR) * 2 * np.pi * 440 / SR)).astype(np.float32)
    tone += (rng.standard_normal(SR) * 1e-3).astype(np.float32)
    features = log_mel(extractor, tone, 3 * SR)
    assert features.shape == (80, 3 * SR // HOP_LENGTH)
    # Frames well past the audio are the clamped silence floor (the array's minimum), the
    # same value the extractor gives when the waveform itself carries the zeros.
    assert np.allclose(features[:, 150:], features.min())
    assert features[:, :90].mean() > features.min() + 0.1
    with pytest.raises(ValueError, match="does not fit"):
        log_mel(extractor, tone, SR // 2)


def test_log_mel_ignores_extractor_chunk_state() -> None:
    extractor = FeatureExtractor(feature_size=80)
    audio = np.zeros(SR, dtype=np.float32)
    before = log_mel(extractor, audio, 2 * SR)
    extractor(audio, chunk_length=10)  # someone else mutating a shared extractor
    assert np.array_equal(log_mel(extractor, audio, 2 * SR), before)


def test_corpus_wer_weighs_by_reference_length() -> None:
    refs = ["one two three four", "yes"]
    assert corpus_word_error_rate(refs, ["one two three four", "no"]) == pytest.approx(1 / 5)
    assert corpus_word_error_rate(refs, ["one two", "yes"]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        corpus_word_error_rate(refs, ["x"])
    with pytest.raises(ValueError):
        corpus_word_error_rate([""], [""])
