"""One call's stereo recording (caller left, agent right), written by the agent, redacted.

During the call livekit-agents' own ``RecorderIO`` sits between the session and its room I/O:
the caller's audio as the session hears it on channel 0, the agent's speech as it is played on
channel 1, encoded to OGG/Opus in its own thread into ``<recordings_dir>/.raw/``. Nothing goes
to a cloud egress service.

After the call (:meth:`CallAudio.finish`) the spans of redacted words are silenced: for each
turn whose text held personal data (:meth:`worker.agent.call_record.CallRecorder.pii_windows`)
the turn's audio goes back to the inference server for word timings
(:func:`worker.agent.plugins.stt_words.transcribe_words`), the words the redactor flags are
silenced (padded a little); when the server cannot answer, or finds no word to blame, the whole
turn is silenced instead: a recording never keeps what the transcript hides. Then the file is
written in its final format with its sha256 (:func:`worker.records.audio.finish_recording`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from livekit.agents import AgentSession
from livekit.agents.voice.recorder_io import RecorderIO

from worker.agent.plugins.stt_words import TranscriptionError, transcribe_words
from worker.records.audio import RECORDING_RATE, decode_stereo, finish_recording, merge_spans
from worker.records.record import Recording
from worker.records.spool import safe_name

__all__ = ["CallAudio", "PiiWindow"]

logger = logging.getLogger("voicestack.agent.records")

SilenceWords = Callable[[list[tuple[str, float, float]]], list[tuple[float, float]]]
"""Word timings (text, start_s, end_s) -> the spans to silence (the call's redaction rules)."""
PiiWindow = tuple[int, float, float]
"""(channel, start_s, end_s) in call time (seconds from the record's ``started_at``)."""
_PAD_S = 0.15  # word timings are good to a frame or two; a clipped syllable would still leak
_ALIGN_BUDGET_S = 12.0  # all word-timing requests of one call; after that, whole turns
# (inside the job process's 30 s to end: worker.agent.runner.SHUTDOWN_PROCESS_TIMEOUT_S)


class CallAudio:
    """Records one call; :meth:`start` once the session runs, :meth:`finish` after it."""

    def __init__(
        self,
        session: AgentSession,
        call_id: str,
        recordings_dir: Path,
        fmt: Literal["ogg", "flac"],
    ) -> None:
        self._session = session
        self.call_id = call_id
        self._dir = recordings_dir
        self._fmt = fmt
        self._raw = recordings_dir / ".raw" / f"{safe_name(call_id)}.ogg"
        self._io: RecorderIO | None = None
        self._started_wall: float | None = None

    async def start(self) -> None:
        """Put the recorder between the session and the room (both directions) and start it."""
        session = self._session
        if session.input.audio is None or session.output.audio is None:
            logger.warning("call %s: no audio I/O to record", self.call_id)
            return
        recorder = RecorderIO(agent_session=session, sample_rate=RECORDING_RATE)
        session.input.audio = recorder.record_input(session.input.audio)
        session.output.audio = recorder.record_output(session.output.audio)
        self._raw.parent.mkdir(parents=True, exist_ok=True)
        await recorder.start(output_path=self._raw)
        self._io = recorder
        self._started_wall = recorder.recording_started_at or time.time()
        logger.info("call %s: recording", self.call_id)

    async def finish(
        self,
        *,
        started_at: datetime,
        windows: list[PiiWindow],
        silence_words: SilenceWords,
        inference_url: str,
    ) -> Recording | None:
        """Stop recording, silence what was redacted, write the final file; None when
        nothing was recorded (never raises for a recording problem: the record is kept)."""
        if self._io is None:
            return None
        try:
            await self._io.aclose()
        except Exception:
            logger.exception("call %s: the recorder did not close cleanly", self.call_id)
        if not self._raw.is_file():
            logger.error("call %s: the recording was not written", self.call_id)
            return None
        assert self._started_wall is not None
        # Call time -> recording time: the recorder started a moment after the call did.
        offset = self._started_wall - started_at.timestamp()
        began, cpu = time.monotonic(), time.process_time()
        try:
            # Decoded once: the word-timing clips and the final encode both read it.
            audio = await asyncio.to_thread(decode_stereo, self._raw, RECORDING_RATE)
            spans = await self._silence_spans(audio, windows, offset, silence_words, inference_url)
            day = started_at.strftime("%Y-%m-%d")
            final = self._dir / day / f"{safe_name(self.call_id)}.{self._fmt}"
            done = await asyncio.to_thread(
                partial(finish_recording, audio=audio), self._raw, final, self._fmt, spans
            )
        except Exception:
            # The raw file holds unredacted speech: it must not stay behind.
            logger.exception("call %s: recording not kept", self.call_id)
            self._raw.unlink(missing_ok=True)
            return None
        logger.info(
            "call %s: recording kept: %.1f s, %d KiB, %d span(s) silenced; redaction and "
            "encoding took %.2f s (%.2f CPU s)",
            self.call_id,
            done.duration_s,
            done.bytes // 1024,
            len(done.silenced),
            time.monotonic() - began,
            time.process_time() - cpu,
        )
        return Recording(
            path=str(done.path.relative_to(self._dir)),
            format=done.format,
            sha256=done.sha256,
            bytes=done.bytes,
            duration_s=done.duration_s,
            silenced=tuple((c, round(a, 3), round(b, 3)) for c, a, b in done.silenced),
        )

    async def _silence_spans(
        self,
        audio: np.ndarray,
        windows: list[PiiWindow],
        offset: float,
        silence_words: SilenceWords,
        inference_url: str,
    ) -> list[tuple[int, float, float]]:
        if not windows:
            return []
        loop = asyncio.get_running_loop()
        until = loop.time() + _ALIGN_BUDGET_S
        spans: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
        for channel, start, end in windows:
            a, b = max(0.0, start - offset), max(0.0, end - offset)
            clip = audio[channel, int(a * RECORDING_RATE) : int(b * RECORDING_RATE)]
            found: list[tuple[float, float]] = []
            left = until - loop.time()
            if clip.size and left > 1.0:
                try:
                    _, words = await transcribe_words(
                        inference_url,
                        clip,
                        RECORDING_RATE,
                        call_id=f"{self.call_id}-redact",
                        timeout_s=min(left, 10.0),
                    )
                    found = silence_words([(w.text, w.start_s, w.end_s) for w in words])
                except TranscriptionError as err:
                    logger.warning(
                        "call %s: no word timings (%s): the turn is silenced whole",
                        self.call_id,
                        err,
                    )
            if found:
                spans[channel].extend((a + s, a + e) for s, e in found)
            else:
                spans[channel].append((a, b))  # unknown where: all of it
        return [
            (channel, s, e)
            for channel, ranges in spans.items()
            for s, e in merge_spans(ranges, pad_s=_PAD_S)
        ]
