"""Turn-taking at the caller: did the agent cut into a pause, and how fast did it yield.

Works on what the caller heard (the recording holds only the agent's audio) and the caller's
own schedule (:class:`worker.caller.utterances.ScheduledUtterance`, same time base):

- **cut-in** (``paused`` turns): agent speech starting inside the caller's utterance, after its
  first words: the agent answered into a mid-sentence pause;
- **barge-in stop** (``barge_in`` and ``backchannel`` turns): from the caller's speech onset
  over the agent to the moment the agent's audio goes quiet at the caller (``quiet_s`` of
  frames under the threshold); ``None`` when the agent was not talking at the onset;
- **resumed** (``backchannel`` turns): agent speech within ``resume_window_s`` after the
  backchannel ended (livekit-agents resumes a paused answer after its false-interruption
  timeout; a new answer to "mm-hmm" would be a miss the transcript shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.caller.analysis import active_frames
from worker.caller.audio import Pcm
from worker.caller.utterances import ScheduledUtterance

__all__ = ["OverlapResult", "analyse_overlaps"]

FRAME_S = 0.02


@dataclass(frozen=True)
class OverlapResult:
    """The turn-taking outcome of one caller utterance (times in seconds)."""

    index: int
    kind: str
    cut_in: bool | None = None
    """``paused`` turns: the agent started speaking before the caller finished."""
    agent_talking_at_onset: bool | None = None
    stop_s: float | None = None
    """``barge_in``/``backchannel``: onset of the caller's speech -> agent quiet at the caller."""
    resumed_after_s: float | None = None
    """``backchannel``: end of the backchannel -> agent speech again (None: it stayed quiet)."""


def _quiet_run_start(active: np.ndarray, start: int, quiet: int) -> int | None:
    """First frame index >= ``start`` that begins ``quiet`` consecutive inactive frames."""
    run = 0
    for i in range(start, len(active)):
        run = 0 if active[i] else run + 1
        if run >= quiet:
            return i - quiet + 1
    return None


def analyse_overlaps(
    recording: Pcm,
    rate: int,
    schedule: Sequence[ScheduledUtterance],
    *,
    threshold_dbfs: float = -42.0,
    quiet_s: float = 0.3,
    onset_lookback_s: float = 0.3,
    resume_window_s: float = 4.0,
) -> list[OverlapResult]:
    """The turn-taking result of every ``paused``, ``barge_in`` and ``backchannel`` utterance."""
    active = active_frames(
        recording, rate, frame_ms=round(FRAME_S * 1000), threshold_dbfs=threshold_dbfs
    )

    def frame(t: float) -> int:
        return max(0, min(len(active), round(t / FRAME_S)))

    quiet = max(1, round(quiet_s / FRAME_S))
    results: list[OverlapResult] = []
    for i, utt in enumerate(schedule, start=1):
        if utt.kind == "paused":
            first_gap = utt.pauses[0][0] if utt.pauses else utt.start_s
            cut = bool(active[frame(first_gap) : frame(utt.end_s)].any())
            results.append(OverlapResult(index=i, kind=utt.kind, cut_in=cut))
        elif utt.kind in ("barge_in", "backchannel"):
            onset = frame(utt.start_s)
            talking = bool(active[frame(utt.start_s - onset_lookback_s) : onset + 1].any())
            stop: float | None = None
            if talking:
                q = _quiet_run_start(active, onset, quiet)
                stop = None if q is None else max(0.0, (q - onset) * FRAME_S)
            resumed: float | None = None
            if utt.kind == "backchannel":
                end = frame(utt.end_s)
                later = np.flatnonzero(active[end : frame(utt.end_s + resume_window_s)])
                resumed = None if len(later) == 0 else float(later[0]) * FRAME_S
            results.append(
                OverlapResult(
                    index=i,
                    kind=utt.kind,
                    agent_talking_at_onset=talking,
                    stop_s=stop,
                    resumed_after_s=resumed,
                )
            )
    return results
