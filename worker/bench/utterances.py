"""Caller speech for the benchmark: real utterances synthesized once with the bundled Piper
voice, resampled to 16 kHz and cached as WAV files under ``.run/bench/utterances``.

Synthesis happens before any event loop starts (it is model work) and only when a cache file is
missing; later runs read the WAV files back.
"""

from __future__ import annotations

import hashlib
import io
import logging
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CALLER_LINES",
    "SAMPLE_RATE",
    "Utterance",
    "UtteranceError",
    "load_or_synthesize",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""The STT protocol's input rate (docs/inference-protocol.md)."""

MIN_S = 2.0
MAX_S = 4.0

# What callers to a service line say; each line lasts 2-4 s with the bundled voice.
CALLER_LINES: tuple[str, ...] = (
    "Hi, I would like to check the status of my order.",
    "My internet connection keeps dropping every evening.",
    "Can you tell me when my next bill is due?",
    "I was charged twice for the same purchase last week.",
    "I need to change the address on my account.",
    "What are your opening hours on Saturday?",
    "The package arrived damaged, what should I do?",
    "Could you help me reset my password please?",
    "I want to cancel my subscription at the end of the month.",
    "Is there a cheaper plan for my mobile phone?",
)

_CACHE_VERSION = "1"  # bump when synthesis or resampling changes so stale files are not reused


class UtteranceError(RuntimeError):
    """Caller audio could not be produced; the message says why."""


@dataclass(frozen=True)
class Utterance:
    """One caller line as 16 kHz mono PCM (signed 16-bit little-endian)."""

    text: str
    pcm: bytes

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


def _cache_key(text: str, voice: Path) -> str:
    stat = voice.stat()
    material = f"{_CACHE_VERSION}|{voice.name}|{stat.st_size}|{text}"
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise UtteranceError(f"{path}: cached utterance is not 16 kHz mono 16-bit; delete it")
        return wav.readframes(wav.getnframes())


def _write_wav(path: Path, pcm: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    tmp.replace(path)  # atomic: a reader never sees half a file


def _resample_to_16k(pcm: bytes, rate: int) -> bytes:
    """Resample PCM s16 mono with PyAV's resampler (via faster-whisper's decode_audio)."""
    from faster_whisper.audio import decode_audio  # heavy import, only when synthesizing

    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    buf.seek(0)
    audio = np.asarray(decode_audio(buf, sampling_rate=SAMPLE_RATE), dtype=np.float32)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class _PiperSynth:
    """The bundled Piper voice through the server's own TTS engine class (one pinned thread)."""

    def __init__(self, voice_onnx: Path) -> None:
        from worker.inference.engines.tts import TtsEngine

        config = voice_onnx.with_name(voice_onnx.name + ".json")
        self._engine = TtsEngine(voice_onnx, config, device="cpu", threads=1)
        self.sample_rate = self._engine.sample_rate

    def synthesize(self, text: str, speed: float) -> bytes:
        return self._engine.synthesize(text, speed).astype("<i2").tobytes()


def load_or_synthesize(
    cache_dir: Path,
    voice_onnx: Path,
    lines: Sequence[str] = CALLER_LINES,
) -> list[Utterance]:
    """The caller utterances, synthesized with ``voice_onnx`` on first use and cached.

    Every utterance must last 2-4 s; a line outside that range is re-synthesized once at a
    tempo that brings it to ~3 s, and if that still fails :class:`UtteranceError` is raised
    (the benchmark's turn timing depends on it).
    """
    if not voice_onnx.is_file():
        raise UtteranceError(f"Piper voice not found: {voice_onnx}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    synth: _PiperSynth | None = None
    out: list[Utterance] = []
    for text in lines:
        path = cache_dir / f"{_cache_key(text, voice_onnx)}.wav"
        if path.is_file():
            out.append(Utterance(text=text, pcm=_read_wav(path)))
            continue
        if synth is None:
            log.info("synthesizing %d caller utterances with %s", len(lines), voice_onnx.name)
            synth = _PiperSynth(voice_onnx)
        pcm = _resample_to_16k(synth.synthesize(text, 1.0), synth.sample_rate)
        utt = Utterance(text=text, pcm=pcm)
        if not MIN_S <= utt.duration_s <= MAX_S:
            pcm = _resample_to_16k(synth.synthesize(text, utt.duration_s / 3.0), synth.sample_rate)
            utt = Utterance(text=text, pcm=pcm)
        if not MIN_S <= utt.duration_s <= MAX_S:
            raise UtteranceError(
                f"caller line {text!r} lasts {utt.duration_s:.2f} s, outside {MIN_S}-{MAX_S} s"
            )
        _write_wav(path, pcm)
        out.append(utt)
    return out
