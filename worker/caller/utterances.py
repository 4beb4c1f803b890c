"""The caller's side of the scripted call: its utterances (spoken by espeak-ng, a different
voice than the agent's Piper voice, so the two can never be confused in a transcript) laid out
on one timeline with generous pauses for the agent's greeting and answers.

Why one pre-built WAV and not live switching: baresip's ``aufile`` source plays one file from
call answer, so the SIP caller cannot start the next file on cue. Both transports therefore play
the same file from the moment the call is answered and record from that same moment; the
analysis knows exactly when each utterance ended from this schedule.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from worker.caller.audio import Pcm, read_wav, resample, write_wav

__all__ = [
    "DEFAULT_QUESTIONS",
    "CallerScript",
    "CallerTurn",
    "ScheduledUtterance",
    "TurnKind",
    "build_caller_script",
    "build_turn_script",
    "speak_espeak",
]

DEFAULT_QUESTIONS: tuple[str, ...] = (
    "Hi, what are your opening hours?",
    "Can you help me change my delivery address?",
    "Okay, thank you very much.",
)

ESPEAK_VOICE = "en-us+f3"  # a female espeak voice; the agent speaks with Piper "joe" (male)


TurnKind = Literal["question", "paused", "barge_in", "backchannel"]
"""``question``: said into silence, answered. ``paused``: a question with a mid-sentence pause
the agent must not answer into. ``barge_in``: a real question said over the agent's answer.
``backchannel``: "mm-hmm" said over the agent, which must resume its answer."""


@dataclass(frozen=True)
class CallerTurn:
    """What the caller says in one turn: ``parts`` with ``pause_s`` of silence between them,
    then ``wait_s`` of silence for the agent (short before a barge-in: the agent is still
    talking when the next turn starts)."""

    parts: tuple[str, ...]
    wait_s: float = 14.0
    pause_s: float = 0.0
    kind: TurnKind = "question"

    @property
    def text(self) -> str:
        return " ".join(self.parts)


@dataclass(frozen=True)
class ScheduledUtterance:
    """One caller utterance on the call timeline (seconds from call answer)."""

    text: str
    start_s: float
    end_s: float
    kind: TurnKind = "question"
    pauses: tuple[tuple[float, float], ...] = ()
    """The silent gaps inside the utterance (start, end), on the same timeline."""

    def shifted(self, delta_s: float) -> ScheduledUtterance:
        """The same utterance ``delta_s`` later on the timeline."""
        return replace(
            self,
            start_s=self.start_s + delta_s,
            end_s=self.end_s + delta_s,
            pauses=tuple((a + delta_s, b + delta_s) for a, b in self.pauses),
        )


@dataclass(frozen=True)
class CallerScript:
    """The caller WAV and where each utterance sits in it."""

    wav: Path
    sample_rate: int
    utterances: tuple[ScheduledUtterance, ...]
    duration_s: float


def speak_espeak(text: str, rate: int, *, voice: str = ESPEAK_VOICE) -> Pcm:
    """Synthesize ``text`` with espeak-ng, trimmed of leading/trailing silence, at ``rate`` Hz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "u.wav"
        proc = subprocess.run(
            [exe, "-v", voice, "-s", "150", "-w", str(out), text],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"espeak-ng failed for {text!r}: {proc.stderr.strip()}")
        samples, src_rate = read_wav(out)
    samples = _trim(samples)
    return resample(samples, src_rate, rate)


def _trim(samples: Pcm, threshold: int = 300) -> Pcm:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if len(loud) == 0:
        raise RuntimeError("espeak-ng produced silence")
    return samples[loud[0] : loud[-1] + 1]


def build_caller_script(
    out_dir: Path,
    *,
    questions: tuple[str, ...] = DEFAULT_QUESTIONS,
    sample_rate: int = 16000,
    greeting_wait_s: float = 9.0,
    answer_wait_s: float | Sequence[float] = 14.0,
) -> CallerScript:
    """Write ``caller.wav`` into ``out_dir``: silence for the greeting, then each question
    followed by ``answer_wait_s`` of silence for the agent's answer (one value for every
    question, or one per question)."""
    if not questions:
        raise ValueError("the caller needs at least one question")
    waits = (
        [float(answer_wait_s)] * len(questions)
        if isinstance(answer_wait_s, int | float)
        else [float(w) for w in answer_wait_s]
    )
    if len(waits) != len(questions):
        raise ValueError(f"{len(waits)} answer waits for {len(questions)} questions")
    turns = [CallerTurn((q,), wait_s=w) for q, w in zip(questions, waits, strict=True)]
    return build_turn_script(
        out_dir, turns, sample_rate=sample_rate, greeting_wait_s=greeting_wait_s
    )


def build_turn_script(
    out_dir: Path,
    turns: Sequence[CallerTurn],
    *,
    sample_rate: int = 16000,
    greeting_wait_s: float = 9.0,
) -> CallerScript:
    """Write ``caller.wav`` into ``out_dir``: ``greeting_wait_s`` of silence, then each turn's
    parts (espeak-ng) with its pauses, each followed by its ``wait_s`` of silence."""
    if not turns:
        raise ValueError("the caller needs at least one turn")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts: list[Pcm] = [np.zeros(int(greeting_wait_s * sample_rate), dtype=np.int16)]
    cursor = greeting_wait_s
    schedule: list[ScheduledUtterance] = []
    for turn in turns:
        if not turn.parts or any(not p.strip() for p in turn.parts):
            raise ValueError(f"a caller turn needs words in every part: {turn.parts!r}")
        start = cursor
        pauses: list[tuple[float, float]] = []
        for i, piece in enumerate(turn.parts):
            if i:
                gap = np.zeros(int(turn.pause_s * sample_rate), dtype=np.int16)
                pauses.append((cursor, cursor + len(gap) / sample_rate))
                parts.append(gap)
                cursor += len(gap) / sample_rate
            speech = speak_espeak(piece, sample_rate)
            parts.append(speech)
            cursor += len(speech) / sample_rate
        schedule.append(
            ScheduledUtterance(
                text=turn.text, start_s=start, end_s=cursor, kind=turn.kind, pauses=tuple(pauses)
            )
        )
        parts.append(np.zeros(int(turn.wait_s * sample_rate), dtype=np.int16))
        cursor += turn.wait_s
    samples = np.concatenate(parts)
    wav = out_dir / "caller.wav"
    write_wav(wav, samples, sample_rate)
    return CallerScript(
        wav=wav,
        sample_rate=sample_rate,
        utterances=tuple(schedule),
        duration_s=len(samples) / sample_rate,
    )
