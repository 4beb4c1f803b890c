"""Call recordings on disk: read a channel, silence spans, write OGG/Opus or FLAC, hash.

Pure file work with PyAV (FFmpeg's codecs, already a livekit-agents dependency): no LiveKit,
no model. The agent writes the raw stereo recording during the call (caller left, agent right,
:mod:`worker.agent.call_recording`); after the call :func:`finish_recording` silences the spans
of redacted words and writes the file the record points at, with its sha256.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

__all__ = [
    "RECORDING_RATE",
    "FinishedAudio",
    "decode_stereo",
    "finish_recording",
    "merge_spans",
    "sha256_file",
]

RECORDING_RATE = 16_000
"""Sample rate of recordings: the phone leg carries 8 kHz, the agent's voice 22 kHz; 16 kHz
keeps both intelligible for review at a third of 48 kHz's size."""
_FADE_S = 0.01  # a hard cut to zero clicks; 10 ms ramps do not
_OPUS_BIT_RATE = 32_000


@dataclass(frozen=True)
class FinishedAudio:
    """The recording as written: where, what, how big, its hash, what was silenced."""

    path: Path
    format: Literal["ogg", "flac"]
    sha256: str
    bytes: int
    duration_s: float
    silenced: tuple[tuple[int, float, float], ...]
    """(channel, start_s, end_s): channel 0 is the caller, 1 the agent."""


def decode_stereo(path: Path, rate: int = RECORDING_RATE) -> np.ndarray:
    """The whole file as float32 (2, samples) at ``rate`` (mono files are duplicated)."""
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((2, 0), dtype=np.float32)
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False)


def merge_spans(
    spans: Iterable[tuple[float, float]], *, pad_s: float = 0.0, gap_s: float = 0.0
) -> list[tuple[float, float]]:
    """Sorted, padded, non-overlapping spans (spans closer than ``gap_s`` are joined)."""
    out: list[tuple[float, float]] = []
    for start, end in sorted((max(0.0, s - pad_s), e + pad_s) for s, e in spans if e > s):
        if out and start <= out[-1][1] + gap_s:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _silence(audio: np.ndarray, channel: int, start_s: float, end_s: float, rate: int) -> None:
    a = max(0, int(start_s * rate))
    b = min(audio.shape[1], int(np.ceil(end_s * rate)))
    if b <= a:
        return
    fade = min(int(_FADE_S * rate), (b - a) // 2)
    if fade:
        audio[channel, a : a + fade] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        audio[channel, b - fade : b] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    audio[channel, a + fade : b - fade] = 0.0


def _encode(audio: np.ndarray, path: Path, fmt: Literal["ogg", "flac"], rate: int) -> None:
    codec = "libopus" if fmt == "ogg" else "flac"
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        if fmt == "ogg":
            # Speech: 32 kb/s stereo Opus is clear (FFmpeg's default spends ~100 kb/s), and a
            # middle complexity halves the encoder's CPU for no audible loss on a phone call.
            stream.bit_rate = _OPUS_BIT_RATE
            stream.codec_context.options = {"compression_level": "5"}
        if fmt == "flac":
            # FLAC stores integers: hand it 16-bit samples, interleaved.
            pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm), format="s16", layout="stereo"
            )
        else:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio), format="fltp", layout="stereo"
            )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_recording(
    raw: Path,
    final: Path,
    fmt: Literal["ogg", "flac"],
    silence: Sequence[tuple[int, float, float]] = (),
    *,
    rate: int = RECORDING_RATE,
    audio: np.ndarray | None = None,
) -> FinishedAudio:
    """Write ``final`` from the raw recording with ``silence`` spans (channel, start_s, end_s)
    zeroed, then remove ``raw``. ``audio``: the raw file already decoded by the caller
    (:func:`decode_stereo` at ``rate``; its spans are zeroed in place), not decoded again.
    Always encoded again: the raw file is livekit-agents' RecorderIO output at FFmpeg's default
    ~100 kb/s, the kept one 32 kb/s Opus (or FLAC), a third of the disk. The file appears under
    its final name only once complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    spans = tuple(silence)
    tmp = final.with_name(final.name + ".part")
    try:
        if audio is None:
            audio = decode_stereo(raw, rate)
        for channel, start, end in spans:
            _silence(audio, channel, start, end, rate)
        _encode(audio, tmp, fmt, rate)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    duration = audio.shape[1] / rate
    raw.unlink(missing_ok=True)
    os.replace(tmp, final)
    return FinishedAudio(
        path=final,
        format=fmt,
        sha256=sha256_file(final),
        bytes=final.stat().st_size,
        duration_s=round(duration, 3),
        silenced=spans,
    )
