"""Synthetic "agent audio" for the caller-side analyses: a tone where the agent speaks."""

from __future__ import annotations

import numpy as np


def tone_spans(
    total_s: float, speech: list[tuple[float, float]], *, rate: int = 8000, hz: float = 300.0
) -> np.ndarray:
    """``total_s`` of int16 audio: a tone (about -13 dBFS) inside the ``speech`` spans (start,
    end in seconds), silence elsewhere."""
    t = np.arange(int(total_s * rate)) / rate
    tone = (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    out = np.zeros_like(tone)
    for a, b in speech:
        out[int(a * rate) : int(b * rate)] = tone[int(a * rate) : int(b * rate)]
    return out
