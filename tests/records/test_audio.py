"""Recording files: silencing spans per channel, both formats, the hash, and that an OGG with
nothing to silence is kept as it was recorded (no second lossy encode)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from worker.records.audio import (
    RECORDING_RATE,
    _encode,
    decode_stereo,
    finish_recording,
    merge_spans,
)

RATE = RECORDING_RATE


def tones(seconds: float = 6.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, right]).astype(np.float32)


def level(audio: np.ndarray, channel: int, start: float, end: float) -> float:
    return float(np.abs(audio[channel, int(start * RATE) : int(end * RATE)]).max())


def raw_recording(tmp_path: Path) -> Path:
    raw = tmp_path / "raw.ogg"
    _encode(tones(), raw, "ogg", RATE)
    return raw


@pytest.mark.parametrize("fmt", ["ogg", "flac"])
def test_spans_are_silenced_on_their_channel_only(tmp_path: Path, fmt: str) -> None:
    raw = raw_recording(tmp_path)
    done = finish_recording(
        raw,
        tmp_path / "out" / f"call.{fmt}",
        fmt,
        [(0, 1.0, 2.0), (1, 3.0, 4.0)],  # type: ignore[arg-type]
    )
    assert not raw.exists()  # the unredacted file is gone
    assert done.path.is_file() and done.format == fmt
    assert done.sha256 == hashlib.sha256(done.path.read_bytes()).hexdigest()
    assert done.bytes == done.path.stat().st_size
    assert done.duration_s == pytest.approx(6.0, abs=0.05)
    audio = decode_stereo(done.path)
    # Silent: what remains is the other channel's tone bleeding through 32 kb/s joint-stereo
    # Opus at -50 dB (FLAC: nothing), not the silenced content.
    assert level(audio, 0, 1.05, 1.95) < 0.01  # the caller's span
    assert level(audio, 1, 1.05, 1.95) > 0.2  # the agent meanwhile
    assert level(audio, 1, 3.05, 3.95) < 0.01
    assert level(audio, 0, 3.05, 3.95) > 0.2
    assert level(audio, 0, 4.5, 5.5) > 0.2 and level(audio, 1, 4.5, 5.5) > 0.2
    assert done.silenced == ((0, 1.0, 2.0), (1, 3.0, 4.0))


def test_nothing_to_silence_still_gives_a_compact_opus_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw.ogg"
    with av.open(str(raw), mode="w", format="ogg") as container:  # FFmpeg's default bit rate
        stream = container.add_stream("libopus", rate=RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(tones(), format="fltp", layout="stereo")
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[union-attr]
            container.mux(packet)
    raw_bytes = raw.stat().st_size
    done = finish_recording(raw, tmp_path / "call.ogg", "ogg", [])
    assert done.bytes < raw_bytes / 2, (done.bytes, raw_bytes)
    assert done.sha256 == hashlib.sha256(done.path.read_bytes()).hexdigest()
    assert done.duration_s == pytest.approx(6.0, abs=0.05)
    assert level(decode_stereo(done.path), 0, 1.0, 5.0) > 0.2


def test_no_partial_file_under_the_final_name(tmp_path: Path) -> None:
    raw = tmp_path / "raw.ogg"
    raw.write_bytes(b"not audio")
    with pytest.raises(Exception):  # noqa: B017 - whatever FFmpeg says about garbage
        finish_recording(raw, tmp_path / "call.flac", "flac", [(0, 0.0, 1.0)])
    assert not (tmp_path / "call.flac").exists()
    assert not (tmp_path / "call.flac.part").exists()


def test_merge_spans_pads_sorts_and_joins() -> None:
    assert merge_spans([(5.0, 6.0), (1.0, 2.0), (2.1, 3.0)], pad_s=0.1) == [
        (0.9, 3.1),
        (4.9, 6.1),
    ]
    assert merge_spans([(0.05, 0.5)], pad_s=0.1) == [(0.0, 0.6)]
    assert merge_spans([(1.0, 1.0), (3.0, 2.0)]) == []
