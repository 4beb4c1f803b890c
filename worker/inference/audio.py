"""Small audio helpers shared by the server's clients, tests and benchmarks (numpy only)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["resample"]


def resample(samples: np.ndarray, src_rate: int, dst_rate: int, half_width: int = 16) -> np.ndarray:
    """Band-limited resampling with a Hann-windowed sinc (``half_width`` taps each side).

    Accepts float or int16 mono samples; returns float32 in the input's scale. Downsampling
    lowers the cutoff to the new Nyquist frequency so nothing aliases.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError("sample rates must be positive")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("expected mono samples (1-D)")
    if src_rate == dst_rate or x.size == 0:
        return x.copy()
    n_out = math.floor(x.size * dst_rate / src_rate)
    pos = np.arange(n_out, dtype=np.float64) * (src_rate / dst_rate)
    base = np.floor(pos).astype(np.int64)
    taps = np.arange(-half_width + 1, half_width + 1, dtype=np.int64)
    idx = base[:, None] + taps[None, :]
    dist = pos[:, None] - idx
    cutoff = min(1.0, dst_rate / src_rate)
    window = 0.5 + 0.5 * np.cos(np.pi * np.clip(dist / half_width, -1.0, 1.0))
    kernel = cutoff * np.sinc(cutoff * dist) * window
    valid = (idx >= 0) & (idx < x.size)
    values = np.where(valid, x[np.clip(idx, 0, x.size - 1)], 0.0)
    out: np.ndarray = (values * kernel).sum(axis=1).astype(np.float32)
    return out
