"""Measure what recording and redaction cost per call minute (docs/records.md, "Cost").

A one-minute two-channel conversation (the bundled Piper voice, alternating sides) is encoded
the way livekit-agents' RecorderIO does during a call (FFmpeg's Opus defaults), then finished
the way the agent does after it (decode, silence two spans, encode 32 kb/s Opus or FLAC);
transcript redaction is timed on 100 lines. CPU seconds of this process, bytes on disk.

    .venv/bin/python scripts/measure_recording_cost.py
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import av
import numpy as np

from worker.inference.engines.whisper_eval import synthesize_16k
from worker.models.paths import bundled_model_files
from worker.records.audio import RECORDING_RATE, finish_recording
from worker.records.redact import Redactor

TEXTS = [
    "Hi, I would like to check the status of my order please.",
    "Sure, could you give me your order number and the email address on the account?",
    "My card number is 4111 1111 1111 1111 and my email is jo@example.com.",
    "Thank you. Your order ships tomorrow morning. Is there anything else?",
]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def conversation_minute() -> np.ndarray:
    rate = RECORDING_RATE
    clips = synthesize_16k(TEXTS, bundled_model_files().tts_onnx)
    audio = np.zeros((2, 60 * rate), np.float32)
    at, channel = 0.5, 0
    while at < 58:
        for clip in clips:
            start = int(at * rate)
            n = min(len(clip), audio.shape[1] - start)
            audio[channel, start : start + n] = clip[:n] * 0.8
            at += len(clip) / rate + 0.6
            channel ^= 1
            if at >= 58:
                break
    return audio


def encode_like_recorder_io(audio: np.ndarray, path: Path) -> None:
    with av.open(str(path), mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RECORDING_RATE, layout="stereo")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout="stereo")
        frame.sample_rate = RECORDING_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def main() -> None:
    minute = conversation_minute()
    work = Path(tempfile.mkdtemp())
    for fmt in ("ogg", "flac"):
        raw = work / "raw.ogg"
        c0 = cpu_s()
        encode_like_recorder_io(minute, raw)
        c1 = cpu_s()
        raw_kib = raw.stat().st_size / 1024
        done = finish_recording(raw, work / f"final.{fmt}", fmt, [(0, 10.0, 13.0), (0, 30.0, 33.0)])
        c2 = cpu_s()
        print(
            f"{fmt}: during the call {c1 - c0:.2f} CPU s/min ({raw_kib:.0f} KiB/min raw); "
            f"after it {c2 - c1:.2f} CPU s/min; kept {done.bytes / 1024:.0f} KiB/min"
        )
    redactor = Redactor()
    lines = TEXTS * 25
    c0 = cpu_s()
    for line in lines:
        redactor.redact(line)
    print(f"redaction: {1000 * (cpu_s() - c0) / len(lines):.3f} ms CPU per transcript line")


if __name__ == "__main__":
    main()
