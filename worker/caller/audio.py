"""Small WAV and PCM helpers for the caller (s16 mono), with no dependency beyond numpy."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Pcm", "read_wav", "resample", "write_wav"]

Pcm = npt.NDArray[np.int16]


def read_wav(path: str | Path) -> tuple[Pcm, int]:
    """Samples (mono int16; stereo is averaged) and sample rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).astype(np.int32).mean(axis=1).astype(np.int16)
    return data.copy(), rate


def write_wav(path: str | Path, samples: Pcm, rate: int) -> None:
    """Write mono int16 samples as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def resample(samples: Pcm, src_rate: int, dst_rate: int) -> Pcm:
    """Linear-interpolation resampling: enough for speech fed to a VAD or a phone codec."""
    if src_rate == dst_rate or len(samples) == 0:
        return samples
    n_out = round(len(samples) * dst_rate / src_rate)
    x_old = np.arange(len(samples)) / src_rate
    x_new = np.arange(n_out) / dst_rate
    out = np.interp(x_new, x_old, samples.astype(np.float64))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)
