"""The STT stream's audio window without models: more than ``max_utterance_s`` of unflushed
audio (a caller on hold) keeps the newest audio, drops and counts the oldest, logs once per
segment, and never refuses the stream."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from worker.config.inference import InferenceConfig, LimitsConfig
from worker.inference.metrics import InferenceMetrics
from worker.inference.protocol import SttStart
from worker.inference.stream_io import StreamContext
from worker.inference.stt_stream import _SttStream

BYTES_PER_S = 32_000


def _stream(max_utterance_s: float) -> tuple[_SttStream, InferenceMetrics]:
    metrics = InferenceMetrics()
    ctx = StreamContext(
        SimpleNamespace(closed=False),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        InferenceConfig(limits=LimitsConfig(max_utterance_s=max_utterance_s)),
        metrics,
        "s1",
    )
    return _SttStream(ctx, SttStart(op="stt", call_id="c", interim=False)), metrics


def _dropped_s(metrics: InferenceMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "voicestack_inference_stt_audio_dropped_seconds_total"
    )
    return float(value or 0.0)


def _frame(second: int, nbytes: int = BYTES_PER_S) -> bytes:
    """``nbytes`` of audio whose every sample says which second it belongs to."""
    return (second % 30_000).to_bytes(2, "little") * (nbytes // 2)


def test_a_long_hold_keeps_the_newest_audio_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, metrics = _stream(max_utterance_s=5.0)
    with caplog.at_level(logging.INFO, logger="worker.inference.stt_stream"):
        for second in range(120):  # two minutes without a flush
            stream.append(_frame(second))
    assert len(stream.buffer) == 5 * BYTES_PER_S
    assert bytes(stream.buffer) == b"".join(_frame(s) for s in range(115, 120))
    assert _dropped_s(metrics) == pytest.approx(115.0)
    drops = [r for r in caplog.records if "without a flush" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.INFO

    # The flush takes the newest window; the next segment starts empty and logs again.
    stream.flush()
    final = stream.finals.get_nowait()
    assert final is not None and final.pcm == b"".join(_frame(s) for s in range(115, 120))
    assert not stream.buffer
    with caplog.at_level(logging.INFO, logger="worker.inference.stt_stream"):
        for second in range(7):
            stream.append(_frame(second))
    drops = [r for r in caplog.records if "without a flush" in r.getMessage()]
    assert len(drops) == 2 and "segment 1" in drops[1].getMessage()
    assert _dropped_s(metrics) == pytest.approx(117.0)


def test_window_stays_sample_aligned() -> None:
    # 0.10004 s is 3201.28 bytes: the window rounds down to whole 16-bit samples.
    stream, metrics = _stream(max_utterance_s=0.10004)
    assert stream.max_bytes == 3200
    for i in range(50):
        stream.append(_frame(i, nbytes=1_002))  # odd sample counts: frames of 501 samples
        assert len(stream.buffer) % 2 == 0 and len(stream.buffer) <= 3200
    assert len(stream.buffer) == 3200
    assert bytes(stream.buffer[-1_002:]) == _frame(49, nbytes=1_002)
    assert _dropped_s(metrics) == pytest.approx((50 * 1_002 - 3200) / BYTES_PER_S)


def test_a_frame_larger_than_the_window_keeps_its_newest_part() -> None:
    stream, metrics = _stream(max_utterance_s=0.05)  # 1600 bytes
    stream.append(_frame(1, nbytes=1000))
    stream.append(_frame(2, nbytes=1000) + _frame(3, nbytes=2000))
    assert bytes(stream.buffer) == _frame(3, nbytes=1600)
    assert _dropped_s(metrics) == pytest.approx(2400 / BYTES_PER_S)


def test_audio_under_the_limit_is_kept_whole() -> None:
    stream, metrics = _stream(max_utterance_s=5.0)
    for second in range(5):
        stream.append(_frame(second))
    assert len(stream.buffer) == 5 * BYTES_PER_S
    assert _dropped_s(metrics) == 0.0
