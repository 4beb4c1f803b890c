"""PCM helpers shared by the plugins: livekit ``AudioFrame`` <-> s16le mono bytes."""

from __future__ import annotations

import numpy as np
from livekit import rtc

__all__ = ["frame_to_mono_pcm", "split_pcm"]


def frame_to_mono_pcm(frame: rtc.AudioFrame) -> bytes:
    """The frame's samples as s16le mono (multi-channel input is averaged)."""
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        # Average in int32 so that two loud channels do not wrap around.
        mixed = samples.reshape(-1, frame.num_channels).astype(np.int32).mean(axis=1)
        samples = mixed.astype(np.int16)
    return samples.tobytes()


def split_pcm(pcm: bytes, *, sample_rate: int, max_seconds: float = 1.0) -> list[bytes]:
    """Split s16le mono ``pcm`` into chunks of at most ``max_seconds`` (the protocol's limit)."""
    step = max(2, int(sample_rate * max_seconds) * 2)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]
